"""What an LLC sampler samples: a replica-batched loss with its minibatch stream and centre w*.

A :class:`Target` bundles, for R replicas at once: the centre ``params0`` (w*, leading axis R),
the per-replica data ``data`` (every tensor with leading axis R: a replica's own inputs and
targets, training rows, masks a forward needs, other aux tensors), the training-set size ``n``
per replica and a ``bind(data)`` that builds the replica-batched functions for that data: a
minibatch loss ``loss(params, idx) -> [R]`` on local sample indices idx [R, B] (positions 0..n-1
of each replica's own training set), its gradient ``loss_and_grad(params, idx, out=None)``
(written into ``out`` where the implementation can) and the full training loss. A
:class:`Minibatcher` shuffles each replica's data per epoch from its own counter-based stream.

Sharding is by construction: ``target.shard(lo, hi)`` is the one generic slice of
``llc.shards.take`` over params0, data and masks, and bind is called again on the slice; a
forward never sees per-replica tensors it captured itself (``sample`` refuses those that do).

Constructors: ``from_modular`` (checkpoints of a built-in run), ``from_module`` (any user
``torch.nn.Module`` + loss via ``torch.func``), ``from_functional`` (forward(params, x, **aux)
with a replica axis, for grokbasin's regression families) and ``from_potential`` (a loss that is
a pure function of the parameters, for known-answer tests). Restricted LLC: ``names`` selects
the sampled parameters (the rest stay at w*), ``masks`` restricts elementwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from grokbasin import rng
from grokbasin.llc import shards
from grokbasin.llc.observables import check_datasets, observe_by, per_sample_by_reshape
from grokbasin.types import Params

LossFn = Callable[[Params, torch.Tensor], torch.Tensor]
# params -> (mean loss [R] per observable, per-sample losses [R, m] for the per-sample ones)
ObserveFn = Callable[[Params], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]
# (params, idx, out grads or None) -> (loss [R], grads): grads in ``out`` where supported
GradFn = Callable[..., tuple[torch.Tensor, Params]]
_BATCH_TAG = 0xBA7C
CPU_BLOCK = 16  # replicas per block of the quadratic-net gradient on a CPU


class Minibatcher:
    """Per-replica minibatch indices [R, B]: a fresh seeded permutation of range(n) each epoch.

    Permutations are drawn for a block of epochs at once (one hash and one sort instead of ~40
    small ops per step); epoch e's permutation is the same whichever block it falls in.
    """

    def __init__(self, keys: torch.Tensor, n: int, batch_size: int, max_elems: int = 1 << 22):
        self.keys, self.n, self.b = rng.fold_in(keys, _BATCH_TAG), n, min(batch_size, n)
        self.per_epoch = max(1, n // self.b)  # drop the short last batch: every batch has B rows
        self.block = max(1, min(64, max_elems // max(1, keys.shape[0] * n)))  # epochs per draw
        self._first, self._perms = -1, None  # [R, block, n]: epochs _first, _first + 1, ...

    def __call__(self, step: int) -> torch.Tensor:
        if self.b == self.n:
            return torch.arange(self.n, device=self.keys.device).expand(self.keys.shape[0], -1)
        epoch, j = divmod(step, self.per_epoch)
        if self._perms is None or not 0 <= epoch - self._first < self.block:
            self._first = epoch
            ks = rng.fold_in_many(self.keys, range(epoch, epoch + self.block))  # [R, block]
            self._perms = rng.permutation(ks.reshape(-1), self.n).view(*ks.shape, self.n)
        return self._perms[:, epoch - self._first, j * self.b : (j + 1) * self.b]


class Fns(NamedTuple):
    """The replica-batched functions of a target, bound to one replica range's data."""

    loss: LossFn
    loss_and_grad: GradFn
    full_loss: Callable[[Params], torch.Tensor]
    observe: ObserveFn | None = None  # the observables (``llc.observables``), if any


@dataclass(frozen=True, eq=False)
class Target:
    """A replica-batched sampling target (see the module docstring)."""

    params0: Params
    n: int
    batch_size: int
    bind: Callable[[dict[str, Any]], Fns]
    data: dict[str, Any] = field(default_factory=dict)  # per-replica tensors, leading axis R
    names: list[str] = field(default_factory=list)  # sampled parameters
    masks: dict[str, torch.Tensor] | None = None  # name -> 0/1 [R, ...] (broadcast ones expanded)
    label: str = "target"  # names the constructor and the user's function in messages
    observed: dict[str, int] = field(default_factory=dict)  # observable name -> samples m
    per_sample: tuple[str, ...] = ()  # observables whose per-sample losses are recorded

    def __post_init__(self) -> None:
        R = self.replicas
        for path, t in _leaves(self.data, "data"):
            if t.dim() == 0 or t.shape[0] != R:
                raise ValueError(
                    f"{self.label}: {path} has shape {tuple(t.shape)}; per-replica tensors need "
                    f"a leading axis of R = {R} replicas (params0's)"
                )
        if self.masks is not None:
            object.__setattr__(self, "masks", _expand_masks(self.masks, self.params0, self.label))
        unknown = sorted(set(self.per_sample) - set(self.observed))
        if unknown:
            raise ValueError(
                f"{self.label}: per_sample names {unknown} that are not observables; "
                f"have {sorted(self.observed)}"
            )
        object.__setattr__(self, "_fns", self.bind(self.data))

    @property
    def replicas(self) -> int:
        return next(iter(self.params0.values())).shape[0]

    @property
    def loss(self) -> LossFn:
        return self._fns.loss

    @property
    def loss_and_grad(self) -> GradFn:
        return self._fns.loss_and_grad

    @property
    def full_loss(self) -> Callable[[Params], torch.Tensor]:
        return self._fns.full_loss

    @property
    def observe(self) -> ObserveFn | None:
        return self._fns.observe

    def shard(self, lo: int, hi: int) -> Target:
        """The same target for replicas lo..hi-1, with its own functions and buffers."""
        return shards.take(self, lo, hi)

    def batcher(self, keys: torch.Tensor) -> Minibatcher:
        return Minibatcher(keys, self.n, self.batch_size)


def _leaves(tree: Any, path: str):
    """(path, tensor) for every tensor in nested dicts."""
    if isinstance(tree, torch.Tensor):
        yield path, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{path}[{k!r}]")


def _expand_masks(masks: dict[str, torch.Tensor], params0: Params, label: str) -> Params:
    """Masks in their parameter's dtype, viewed at its full [R, ...] shape (no copy)."""
    unknown = sorted(set(masks) - set(params0))
    if unknown:
        raise ValueError(f"{label}: masks for unknown parameters {unknown}; have {sorted(params0)}")
    out = {}
    for k, m in masks.items():
        p = params0[k]
        try:
            out[k] = m.to(p.dtype).expand(p.shape)
        except RuntimeError:
            raise ValueError(
                f"{label}: masks[{k!r}] of shape {tuple(m.shape)} does not broadcast to the "
                f"parameter's {tuple(p.shape)}"
            ) from None
    return out


def _select(params: Params, names: Sequence[str] | None) -> list[str]:
    """The sampled parameter names, validated."""
    if names is None:
        return sorted(params)
    unknown = sorted(set(names) - set(params))
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}; the model has {sorted(params)}")
    return sorted(names)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", type(fn).__name__)


def autograd_loss_and_grad(loss: LossFn, names: Sequence[str]) -> GradFn:
    """Loss and per-replica gradients via autograd of the summed loss (replicas are independent);
    ``out`` is ignored (fresh gradient tensors)."""

    def fn(params: Params, idx: torch.Tensor, out: Params | None = None):
        with torch.enable_grad():
            leaf = {
                k: (v.detach().requires_grad_(True) if k in names else v) for k, v in params.items()
            }
            val = loss(leaf, idx)
            gs = torch.autograd.grad(val.sum(), [leaf[k] for k in names])
        return val.detach(), dict(zip(names, gs, strict=True))

    return fn


def repeat_replicas(params: Params, copies: int) -> Params:
    """Each group's parameters repeated ``copies`` times along the replica axis (group-major)."""
    return {k: v.repeat_interleave(copies, dim=0).contiguous() for k, v in params.items()}


def from_functional(
    forward: Callable[..., torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params0: Params,
    X: torch.Tensor,
    Y: torch.Tensor,
    batch_size: int | None = None,
    names: Sequence[str] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    per_replica: bool = False,
    aux: dict[str, torch.Tensor] | None = None,
    observables: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    per_sample: Sequence[str] = (),
) -> Target:
    """Target for forward(params, x [R, B, ...], **aux) -> pred [R, ...] and
    loss_fn(pred, y [R, B, ...]) -> [R].

    X [n, ...], Y [n, ...] are shared by all replicas, or [R, n, ...] with ``per_replica``.
    ``aux``: per-replica tensors [R, ...] (masks, sizes, ...) passed to forward by keyword and
    sliced with the replicas, so a forward must not capture per-replica tensors itself.
    ``observables``: name -> (X, Y) datasets (shaped like X, Y) whose loss is recorded at every
    draw, per sample for the names in ``per_sample`` (each sample scored alone by loss_fn).
    """
    n = X.shape[1] if per_replica else X.shape[0]
    label = f"from_functional(forward={_name(forward)})"
    sel = _select(params0, names)
    data: dict[str, Any] = {"X": X, "Y": Y} if per_replica else {}
    if aux:
        data["aux"] = dict(aux)
    obs_sets = {k: tuple(v) for k, v in (observables or {}).items()}
    if per_replica and obs_sets:
        data["obs"] = {k: {"X": v[0], "Y": v[1]} for k, v in obs_sets.items()}
    sizes = {k: int(v[0].shape[1] if per_replica else v[0].shape[0]) for k, v in obs_sets.items()}
    if not per_replica:
        check_datasets(obs_sets, label)
    sample_loss = per_sample_by_reshape(loss_fn)

    def bind(d: dict[str, Any]) -> Fns:
        X_, Y_ = (d["X"], d["Y"]) if per_replica else (X, Y)
        kw = d.get("aux", {})

        def take(T: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            if per_replica:
                return T[torch.arange(T.shape[0], device=T.device)[:, None], idx]
            return T[idx]

        def loss(params: Params, idx: torch.Tensor) -> torch.Tensor:
            x = take(X_, idx)
            pred = forward(params, x, **kw)
            if pred.dim() == 0 or pred.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{label}: output of shape {tuple(pred.shape)} for a shard of "
                    f"{x.shape[0]} replicas (input {tuple(x.shape)}); the leading axis must be "
                    "the shard's replicas: pass per-replica tensors the forward uses via aux="
                )
            return loss_fn(pred, take(Y_, idx))

        def full(params: Params) -> torch.Tensor:
            R = next(iter(params.values())).shape[0]
            return loss(params, torch.arange(n, device=X.device).expand(R, -1))

        obs = {k: (v["X"], v["Y"]) for k, v in d["obs"].items()} if "obs" in d else obs_sets

        def score(params: Params, name: str, each: bool) -> torch.Tensor:
            Xo, Yo = obs[name]
            R = next(iter(params.values())).shape[0]
            idx = torch.arange(sizes[name], device=Xo.device).expand(R, -1)
            pred = forward(params, take(Xo, idx), **kw)
            return (sample_loss if each else loss_fn)(pred, take(Yo, idx))

        observe = observe_by(list(obs), per_sample, score) if obs else None
        return Fns(loss, autograd_loss_and_grad(loss, sel), full, observe)

    return Target(
        params0, n, batch_size or n, bind, data, sel, masks, label, sizes, tuple(per_sample)
    )


def from_potential(
    potential: Callable[..., torch.Tensor],
    params0: Params,
    n: int = 1,
    names: Sequence[str] | None = None,
    aux: dict[str, torch.Tensor] | None = None,
) -> Target:
    """Target whose 'loss' is potential(params, **aux) -> [R], a deterministic function of the
    parameters (minibatches ignored); ``aux`` as in :func:`from_functional`."""
    sel = _select(params0, names)

    def bind(d: dict[str, Any]) -> Fns:
        kw = d.get("aux", {})

        def full(params: Params) -> torch.Tensor:
            return potential(params, **kw)

        def loss(params: Params, idx: torch.Tensor) -> torch.Tensor:
            return potential(params, **kw)

        return Fns(loss, autograd_loss_and_grad(loss, sel), full)

    data = {"aux": dict(aux)} if aux else {}
    label = f"from_potential(potential={_name(potential)})"
    return Target(params0, n, n, bind, data, sel, None, label)


def from_module(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    Y: torch.Tensor,
    replicas: int,
    batch_size: int | None = None,
    params0: Params | None = None,
    names: Sequence[str] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    observables: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    per_sample: Sequence[str] = (),
) -> Target:
    """Target for a user's nn.Module and loss_fn(pred, y) -> scalar mean loss, via torch.func.

    The module's parameters (or ``params0``, each [R, *shape]) are stacked along a replica axis;
    ``vmap`` over that axis gives each replica its own loss and ``grad`` its own gradient. Buffers
    are shared and fixed. Every replica samples from the same data (X [n, ...], Y [n, ...]).
    ``observables``: name -> (X, Y) datasets whose loss is recorded at every draw, per sample
    (loss_fn on one sample) for the names in ``per_sample``.
    """
    from torch.func import functional_call, grad_and_value, vmap

    label = f"from_module({type(module).__name__})"
    obs_sets = {k: tuple(v) for k, v in (observables or {}).items()}
    sizes = check_datasets(obs_sets, label)

    base = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    if params0 is None:
        params0 = {k: v.unsqueeze(0).expand(replicas, *v.shape).clone() for k, v in base.items()}
    sel = _select(params0, names)

    def split(params: Params) -> tuple[Params, Params]:
        return {k: params[k] for k in sel}, {k: v for k, v in params.items() if k not in sel}

    def bind(d: dict[str, Any]) -> Fns:
        # functional_call swaps the module's tensors in place for the call, so shards running in
        # threads must not share one module: each binding (one per shard) gets its own copy
        own = copy.deepcopy(module)

        def single(ps: Params, pf: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(functional_call(own, {**ps, **pf, **buffers}, (x,)), y)

        batched_loss = vmap(single, in_dims=(0, 0, 0, 0))
        batched_grad = vmap(grad_and_value(single), in_dims=(0, 0, 0, 0))
        full_loss = vmap(single, in_dims=(0, 0, None, None))

        def loss(params: Params, idx: torch.Tensor) -> torch.Tensor:
            ps, pf = split(params)
            return batched_loss(ps, pf, X[idx], Y[idx])

        def loss_and_grad(params: Params, idx: torch.Tensor, out: Params | None = None):
            ps, pf = split(params)
            g, val = batched_grad(ps, pf, X[idx], Y[idx])
            return val, g

        def full(params: Params) -> torch.Tensor:
            ps, pf = split(params)
            return full_loss(ps, pf, X, Y)

        def one(ps: Params, pf: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return single(ps, pf, x[None], y[None])

        # [R, m]: every replica (outer vmap) scores every sample alone (inner vmap)
        per_sample_loss = vmap(vmap(one, in_dims=(None, None, 0, 0)), in_dims=(0, 0, None, None))

        def score(params: Params, name: str, each: bool) -> torch.Tensor:
            ps, pf = split(params)
            return (per_sample_loss if each else full_loss)(ps, pf, *obs_sets[name])

        observe = observe_by(list(obs_sets), per_sample, score) if obs_sets else None
        return Fns(loss, loss_and_grad, full, observe)

    n = X.shape[0]
    return Target(
        params0, n, batch_size or n, bind, {}, sel, masks, label, sizes, tuple(per_sample)
    )


def modular_train_rows(cfg) -> torch.Tensor:
    """Dataset rows [R_train, n] of each training replica's split for a run config."""
    from grokbasin.train.loop import make_setup

    return make_setup(cfg).task.train_idx


def from_modular(
    cfg,
    params0: Params,
    rows: torch.Tensor,
    batch_size: int,
    names: Sequence[str] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    max_elems: int = 1 << 26,
    fast: bool = True,
    observables: dict[str, torch.Tensor] | None = None,
    per_sample: Sequence[str] = (),
) -> Target:
    """Target for built-in modular-arithmetic checkpoints of RunConfig ``cfg``.

    ``params0`` [R, ...] are checkpoint parameters already expanded to LLC replicas and ``rows``
    [R, n] each replica's training split (rows of ``modular_train_rows``), so runs that share the
    task and model shapes but differ in seeds or splits batch together. For the quadratic net
    with centred MSE or cross-entropy, gradients are hand-written (``fast_quadratic``;
    ``fast=False`` keeps the reference path); otherwise autograd of the summed built-in loss.
    ``observables``: name -> rows [R, m] of other data (``llc.subsets``) whose loss is recorded
    at every draw, per sample for the names in ``per_sample`` (``llc.observables``).
    """
    from grokbasin.llc.fast_quadratic import LOSSES as FAST_LOSSES
    from grokbasin.llc.fast_quadratic import QuadraticGrad, forward_rows
    from grokbasin.losses import LOSSES, PER_SAMPLE_LOSSES
    from grokbasin.models import build_model
    from grokbasin.tasks.modular import all_pairs

    dev = next(iter(params0.values())).device
    x, y = (t.to(dev) for t in all_pairs(cfg.task.p, cfg.task.op))
    model = build_model(cfg.model, cfg.task.p, cfg.task.p)
    loss_fn, sample_fn = LOSSES[cfg.train.loss], PER_SAMPLE_LOSSES[cfg.train.loss]
    n = rows.shape[1]
    sel = _select(params0, names)
    hand = fast and cfg.model.name == "quadratic" and cfg.train.loss in FAST_LOSSES
    fast_obs = fast and cfg.model.name == "quadratic"

    def bind(d: dict[str, Any]) -> Fns:
        rows_ = d["rows"]

        def loss(params: Params, idx: torch.Tensor) -> torch.Tensor:
            r = rows_.gather(1, idx)
            return loss_fn(model.forward(params, x[r]), y[r])

        obs_ws: dict = {}  # this binding's (shard's) observable workspace

        def on_rows(
            params: Params, rows_all: torch.Tensor, fn: Callable, fast_fwd: bool = False
        ) -> torch.Tensor:
            R, m = rows_all.shape
            chunk = max(1, max_elems // (m * max(cfg.model.width, cfg.task.p)))
            out = []
            for lo in range(0, R, chunk):  # bounded memory; one chunk in the usual case
                p = {k: v[lo : lo + chunk] for k, v in params.items()}
                r = rows_all[lo : lo + chunk]
                if fast_fwd:  # observables of the quadratic net: the gradient's layout
                    pred = forward_rows(p, x, r, cfg.task.p, CPU_BLOCK, obs_ws)
                else:
                    pred = model.forward(p, x[r])
                out.append(fn(pred, y[r]))
            return torch.cat(out)

        def full(params: Params) -> torch.Tensor:
            return on_rows(params, rows_, loss_fn)

        observe = None
        if observables:
            obs = d["obs"]  # this shard's rows of each observable

            def score(params: Params, name: str, each: bool) -> torch.Tensor:
                fn = sample_fn if each else loss_fn
                return on_rows(params, obs[name], fn, fast_fwd=fast_obs)

            observe = observe_by(list(obs), per_sample, score)

        if hand:
            chunk = CPU_BLOCK if dev.type == "cpu" else rows_.shape[0]  # cache blocking: CPUs
            qg = QuadraticGrad(x, y, rows_, cfg.task.p, cfg.train.loss, sel, chunk)
            return Fns(loss, qg, full, observe)
        return Fns(loss, autograd_loss_and_grad(loss, sel), full, observe)

    label = f"from_modular({cfg.model.name}, p={cfg.task.p})"
    data: dict[str, Any] = {"rows": rows.to(dev)}
    if observables:
        data["obs"] = {k: v.to(dev) for k, v in observables.items()}
    sizes = {k: int(v.shape[1]) for k, v in (observables or {}).items()}
    return Target(params0, n, batch_size, bind, data, sel, masks, label, sizes, tuple(per_sample))

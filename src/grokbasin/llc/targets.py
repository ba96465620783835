"""What an LLC sampler samples: a replica-batched loss with its minibatch stream and centre w*.

A :class:`Target` bundles, for R replicas at once: the centre ``params0`` (w*, leading axis R),
the training-set size ``n`` per replica, a minibatch loss ``loss(params, idx) -> [R]`` on local
sample indices idx [R, B] (positions 0..n-1 of each replica's own training set), its gradient, the
full training loss, and a :class:`Minibatcher` that shuffles each replica's data per epoch from
its own counter-based stream (without replacement within an epoch, like a shuffled DataLoader).

Constructors: ``from_modular`` (checkpoints of a built-in run), ``from_module`` (any user
``torch.nn.Module`` + loss via ``torch.func``), ``from_functional`` (forward(params, x) with a
replica axis, for grokbasin's regression families) and ``from_potential`` (a loss that is a pure
function of the parameters, for known-answer tests). Restricted LLC: ``names`` selects the sampled
parameters (the rest stay at w*), ``masks`` restricts elementwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from grokbasin import rng

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params, torch.Tensor], torch.Tensor]
GradFn = Callable[[Params, torch.Tensor], tuple[torch.Tensor, Params]]
# (params, idx, out grads) -> loss: like GradFn but writes the gradients into preallocated tensors
GradIntoFn = Callable[[Params, torch.Tensor, Params], tuple[torch.Tensor, Params]]
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


@dataclass
class Target:
    """A replica-batched sampling target (see the module docstring)."""

    params0: Params
    n: int
    batch_size: int
    loss: LossFn
    loss_and_grad: GradFn
    full_loss: Callable[[Params], torch.Tensor]
    names: list[str] = field(default_factory=list)  # sampled parameters
    masks: dict[str, torch.Tensor] | None = None
    loss_and_grad_into: GradIntoFn | None = None  # optional allocation-free fast path
    # (lo, hi) -> the same target for replicas lo..hi-1 with its own buffers, so shards can run
    # in parallel threads; None where a constructor cannot split (elementwise masks)
    shard: Callable[[int, int], Target] | None = None

    @property
    def replicas(self) -> int:
        return next(iter(self.params0.values())).shape[0]

    def batcher(self, keys: torch.Tensor) -> Minibatcher:
        return Minibatcher(keys, self.n, self.batch_size)


def _select(params: Params, names: Sequence[str] | None) -> list[str]:
    """The sampled parameter names, validated."""
    if names is None:
        return sorted(params)
    unknown = sorted(set(names) - set(params))
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}; the model has {sorted(params)}")
    return sorted(names)


def autograd_loss_and_grad(loss: LossFn, names: Sequence[str]) -> GradFn:
    """Loss and per-replica gradients via autograd of the summed loss (replicas are independent)."""

    def fn(params: Params, idx: torch.Tensor) -> tuple[torch.Tensor, Params]:
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
    forward: Callable[[Params, torch.Tensor], torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params0: Params,
    X: torch.Tensor,
    Y: torch.Tensor,
    batch_size: int | None = None,
    names: Sequence[str] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    per_replica: bool = False,
    aux: dict[str, torch.Tensor] | None = None,
) -> Target:
    """Target for forward(params, x [R, B, ...], **aux) -> pred and loss_fn(pred, y) -> [R].

    X [n, ...], Y [n, ...] are shared by all replicas, or [R, n, ...] with ``per_replica``.
    ``aux``: per-replica tensors (leading axis R, e.g. size masks) passed to ``forward`` as
    keyword arguments; a shard receives its own slice, so forwards never capture [R, ...] data.
    """
    n = X.shape[1] if per_replica else X.shape[0]
    aux = dict(aux or {})

    def take(T: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if per_replica:
            return T[torch.arange(T.shape[0], device=T.device)[:, None], idx]
        return T[idx]

    def loss(params: Params, idx: torch.Tensor) -> torch.Tensor:
        return loss_fn(forward(params, take(X, idx), **aux), take(Y, idx))

    def full(params: Params) -> torch.Tensor:
        R = next(iter(params.values())).shape[0]
        idx = torch.arange(n, device=X.device).expand(R, -1)
        return loss(params, idx)

    def shard(lo: int, hi: int) -> Target:
        X_, Y_ = (X[lo:hi], Y[lo:hi]) if per_replica else (X, Y)
        return from_functional(
            forward,
            loss_fn,
            _replicas(params0, lo, hi),
            X_,
            Y_,
            batch_size,
            names,
            None,
            per_replica,
            _replicas(aux, lo, hi),
        )

    sel = _select(params0, names)
    return Target(
        params0,
        n,
        batch_size or n,
        loss,
        autograd_loss_and_grad(loss, sel),
        full,
        sel,
        masks,
        shard=None if masks else shard,
    )


def from_potential(
    potential: Callable[..., torch.Tensor],
    params0: Params,
    n: int = 1,
    names: Sequence[str] | None = None,
    aux: dict[str, torch.Tensor] | None = None,
) -> Target:
    """Target whose 'loss' is a deterministic function of the parameters (minibatches ignored).

    ``potential(params, **aux)``; ``aux`` tensors have a leading replica axis and shard with it.
    """
    aux = dict(aux or {})

    def pot(params: Params) -> torch.Tensor:
        return potential(params, **aux)

    def loss(params: Params, idx: torch.Tensor) -> torch.Tensor:
        return pot(params)

    def shard(lo: int, hi: int) -> Target:
        return from_potential(
            potential, _replicas(params0, lo, hi), n, names, _replicas(aux, lo, hi)
        )

    sel = _select(params0, names)
    return Target(params0, n, n, loss, autograd_loss_and_grad(loss, sel), pot, sel, shard=shard)


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
) -> Target:
    """Target for a user's nn.Module and loss_fn(pred, y) -> scalar mean loss, via torch.func.

    The module's parameters (or ``params0``, each [R, *shape]) are stacked along a replica axis;
    ``vmap`` over that axis gives each replica its own loss and ``grad`` its own gradient. Buffers
    are shared and fixed. Every replica samples from the same data (X [n, ...], Y [n, ...]).
    """
    from torch.func import functional_call, grad_and_value, vmap

    base = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    if params0 is None:
        params0 = {k: v.unsqueeze(0).expand(replicas, *v.shape).clone() for k, v in base.items()}
    sel = _select(params0, names)
    n = X.shape[0]

    def single(ps: Params, pf: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(module, {**ps, **pf, **buffers}, (x,)), y)

    batched_loss = vmap(single, in_dims=(0, 0, 0, 0))
    batched_grad = vmap(grad_and_value(single), in_dims=(0, 0, 0, 0))
    full_loss = vmap(single, in_dims=(0, 0, None, None))

    def split(params: Params) -> tuple[Params, Params]:
        return {k: params[k] for k in sel}, {k: v for k, v in params.items() if k not in sel}

    def loss(params: Params, idx: torch.Tensor) -> torch.Tensor:
        ps, pf = split(params)
        return batched_loss(ps, pf, X[idx], Y[idx])

    def loss_and_grad(params: Params, idx: torch.Tensor) -> tuple[torch.Tensor, Params]:
        ps, pf = split(params)
        g, val = batched_grad(ps, pf, X[idx], Y[idx])
        return val, g

    def full(params: Params) -> torch.Tensor:
        ps, pf = split(params)
        return full_loss(ps, pf, X, Y)

    def shard(lo: int, hi: int) -> Target:
        return from_module(
            module, loss_fn, X, Y, hi - lo, batch_size, _replicas(params0, lo, hi), names
        )

    return Target(
        params0,
        n,
        batch_size or n,
        loss,
        loss_and_grad,
        full,
        sel,
        masks,
        shard=None if masks else shard,
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
) -> Target:
    """Target for built-in modular-arithmetic checkpoints of RunConfig ``cfg``.

    ``params0`` [R, ...] are checkpoint parameters already expanded to LLC replicas and ``rows``
    [R, n] each replica's training split (rows of ``modular_train_rows``), so runs that share the
    task and model shapes but differ in seeds or splits batch together. For the quadratic net
    with centred MSE or cross-entropy, gradients are hand-written (``fast_quadratic``;
    ``fast=False`` keeps the reference path); otherwise autograd of the summed built-in loss.
    """
    from grokbasin.llc.fast_quadratic import LOSSES as FAST_LOSSES
    from grokbasin.llc.fast_quadratic import QuadraticGrad
    from grokbasin.losses import LOSSES
    from grokbasin.models import build_model
    from grokbasin.tasks.modular import all_pairs

    dev = next(iter(params0.values())).device
    x, y = (t.to(dev) for t in all_pairs(cfg.task.p, cfg.task.op))
    model = build_model(cfg.model, cfg.task.p, cfg.task.p)
    loss_fn = LOSSES[cfg.train.loss]
    rows = rows.to(dev)
    n = rows.shape[1]

    def loss(params: Params, idx: torch.Tensor) -> torch.Tensor:
        r = rows.gather(1, idx)
        return loss_fn(model.forward(params, x[r]), y[r])

    def full(params: Params) -> torch.Tensor:
        R = rows.shape[0]
        chunk = max(1, max_elems // (n * max(cfg.model.width, cfg.task.p)))
        out = []
        for lo in range(0, R, chunk):  # bounded memory; one chunk in the usual case
            p = {k: v[lo : lo + chunk] for k, v in params.items()}
            r = rows[lo : lo + chunk]
            out.append(loss_fn(model.forward(p, x[r]), y[r]))
        return torch.cat(out)

    def shard(lo: int, hi: int) -> Target:
        return from_modular(
            cfg, _replicas(params0, lo, hi), rows[lo:hi], batch_size, names, None, max_elems, fast
        )

    sel = _select(params0, names)
    split = None if masks else shard
    if fast and cfg.model.name == "quadratic" and cfg.train.loss in FAST_LOSSES:
        chunk = CPU_BLOCK if dev.type == "cpu" else rows.shape[0]  # cache blocking: CPUs only
        qg = QuadraticGrad(x, y, rows, cfg.task.p, cfg.train.loss, sel, chunk)
        return Target(params0, n, batch_size, loss, qg, full, sel, masks, qg, split)
    return Target(
        params0,
        n,
        batch_size,
        loss,
        autograd_loss_and_grad(loss, sel),
        full,
        sel,
        masks,
        shard=split,
    )


def _replicas(params: Params, lo: int, hi: int) -> Params:
    """Replicas lo..hi-1 of every tensor."""
    return {k: v[lo:hi] for k, v in params.items()}

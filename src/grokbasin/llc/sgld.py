"""SGMCMC sampler steps (SGLD, RMSprop-SGLD, SGNHT) as pure functions over replica-batched params.

Every tensor in ``params`` carries a leading replica axis R, and every hyperparameter is an [R]
tensor, so chains, checkpoints, temperatures and an ε×γ calibration grid all advance in one call.
Noise comes from ``grokbasin.rng`` keyed by (replica key, step, parameter), never ``torch.randn``,
so a replica's trajectory does not depend on what else is in the batch.

SGLD is devinterp 1.3.2's update (SPEC §3.3):
    Δw = −(ε/2)·(nβ·∇L_B(w) + γ(w − w*) + ω·w) + √ε·σ·ξ,    ξ ~ N(0, I), σ = noise level.
RMSprop-SGLD (devinterp's ``rmsprop_sgld``, Li et al. 2016): V ← αV + (1−α)g², g = ∇L_B (raw
minibatch gradient), G = 1/(√V + eps); the drift (ε/2)·G·(…) and the noise √(εG)·σ·ξ.
SGNHT (devinterp's ``SGNHT``, Ding et al. 2014): momentum m ← m − ε·(nβ∇L_B + γ(w − w*) + ω·w)
− ξ_t·m + √(2Aε)·ξ, w ← w + m, thermostat ξ_t ← ξ_t + mean(m²) − ε (per replica; A the
diffusion factor; m starts at √ε·N(0, I)). devinterp's SGNHT has no localisation; adding the
prior's gradient to the force is the natural extension and is what γ = ω = 0 reduces to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from grokbasin import rng

Params = dict[str, torch.Tensor]
METHODS = ("sgld", "rmsprop_sgld", "sgnht")
NORM_NAMES = ("grad", "localization", "weight_decay", "noise", "distance")
_NOISE_TAG, _MOMENTUM_TAG = 0x5617D, 0x3077


@dataclass(frozen=True)
class Hyper:
    """Per-replica sampler hyperparameters, each an [R] tensor (broadcast from scalars by make)."""

    step_size: torch.Tensor
    nbeta: torch.Tensor
    gamma: torch.Tensor
    weight_decay: torch.Tensor
    noise_level: torch.Tensor
    diffusion: torch.Tensor  # SGNHT diffusion factor A
    rms_alpha: float = 0.99
    rms_eps: float = 0.1
    extra: dict = field(default_factory=dict)

    @property
    def replicas(self) -> int:
        return self.step_size.shape[0]

    def subset(self, idx: torch.Tensor) -> Hyper:
        """The same hyperparameters for a subset of replicas."""
        names = ("step_size", "nbeta", "gamma", "weight_decay", "noise_level", "diffusion")
        return replace(self, **{k: getattr(self, k)[idx] for k in names})


def make_hyper(
    R: int,
    step_size: float | torch.Tensor,
    nbeta: float | torch.Tensor,
    gamma: float | torch.Tensor = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    noise_level: float | torch.Tensor = 1.0,
    diffusion: float | torch.Tensor = 0.01,
    rms_alpha: float = 0.99,
    rms_eps: float = 0.1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Hyper:
    """Hyper with every field broadcast to [R] (scalars or [R] tensors/lists accepted)."""

    def vec(v: float | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=dtype, device=device).reshape(-1)
        return t.expand(R).clone() if t.numel() == 1 else t.clone()

    h = Hyper(
        vec(step_size),
        vec(nbeta),
        vec(gamma),
        vec(weight_decay),
        vec(noise_level),
        vec(diffusion),
        rms_alpha,
        rms_eps,
    )
    for name in ("step_size", "nbeta", "gamma", "weight_decay", "noise_level", "diffusion"):
        if getattr(h, name).shape != (R,):
            raise ValueError(
                f"{name}: expected a scalar or {R} values, got {getattr(h, name).shape}"
            )
    return h


def _b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An [R] vector viewed to broadcast against a [R, ...] tensor."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def noise(keys: torch.Tensor, step: int, like: Params) -> Params:
    """Standard normal noise for every tensor in ``like`` (sorted by name) from the (replica, step)
    stream: one draw of the concatenated size, split, so the cost is one hash pass per step."""
    names = sorted(like)
    sizes = [like[k][0].numel() for k in names]
    z = rng.normal_pairs(rng.fold_in(keys, _NOISE_TAG), step, sum(sizes), like[names[0]].dtype)
    return _split(z, names, like)


def _split(z: torch.Tensor, names: list[str], like: Params) -> Params:
    """Columns of z [R, Σ sizes] viewed as the tensors of ``like`` (in ``names`` order)."""
    parts = torch.split(z, [like[k][0].numel() for k in names], dim=1)
    return {k: part.view(like[k].shape) for k, part in zip(names, parts, strict=True)}


class FusedSGLD:
    """Plain SGLD (no masks, norms or MALA) updating params in place with no per-step tensors.

    Rewrites devinterp's update as w ← a·w + b·w* + c·∇L_B + s·ξ with per-replica constants
    a = 1 − ε(γ+ω)/2, b = εγ/2, c = −εnβ/2, s = √ε·σ and b·w* precomputed once. ξ is
    :func:`noise`'s stream. On a CPU one compiled loop per replica draws ξ and applies the update
    (``cpu_kernels``); elsewhere, or for parameters that are not contiguous, a preallocated
    ``rng.NormalStream`` and three in-place passes per tensor do the same.
    """

    def __init__(self, params: Params, center: Params, hyper: Hyper, keys: torch.Tensor):
        from grokbasin.llc import cpu_kernels

        self.names = sorted(params)
        first = params[self.names[0]]
        R, dev = first.shape[0], first.device
        self.keys = rng.fold_in(keys, _NOISE_TAG)
        n = sum(params[k][0].numel() for k in self.names)
        h = hyper
        a = 1.0 - 0.5 * h.step_size * (h.gamma + h.weight_decay)
        c, s = -0.5 * h.step_size * h.nbeta, h.step_size.sqrt() * h.noise_level
        self.bc = {k: _b(0.5 * h.step_size * h.gamma, params[k]) * center[k] for k in self.names}
        self.grads = {k: torch.empty_like(params[k]) for k in self.names}  # gradient buffers
        same = len({params[k].dtype for k in self.names}) == 1
        on_cpu = dev.type == "cpu" and same and cpu_kernels.available()
        self.kernel = cpu_kernels.sgld_update if on_cpu else None
        if self.kernel is not None:
            self.starts = rng.StreamStarts(self.keys)
            self.acs = [v.to(first.dtype).contiguous().numpy() for v in (a, c, s)]
            self.row = torch.empty(2 * ((n + 1) // 2), dtype=first.dtype).numpy()
            self.drift0 = _rows(self.bc, self.names)
            self._views: dict[tuple, tuple] = {}
        self.stream_args = (R, n, dev, first.dtype)
        self.stream: rng.NormalStream | None = None  # built on the first torch-path step
        self.a = {k: _b(a, params[k]) for k in self.names}
        self.c = {k: _b(c, params[k]) for k in self.names}
        self.s = {k: _b(s, params[k]) for k in self.names}

    def step_(self, params: Params, grads: Params, t: int) -> None:
        """Advance every replica one step, in place."""
        if self.kernel is not None and all(params[k].is_contiguous() for k in self.names):
            starts = self.starts(t).contiguous().numpy().view(np.uint64)
            self.kernel(
                self._rows(params), self._rows(grads), self.drift0, *self.acs, starts, self.row
            )
            return
        if self.stream is None:
            self.stream = rng.NormalStream(*self.stream_args)
        xi = _split(self.stream(self.keys, t), self.names, params)
        for k in self.names:
            w = torch.addcmul(self.bc[k], params[k], self.a[k], out=params[k])
            w.addcmul_(grads[k], self.c[k]).addcmul_(xi[k], self.s[k])

    def _rows(self, tensors: Params) -> tuple[np.ndarray, ...]:
        """:func:`_rows` of ``tensors``, reused while they are the same contiguous tensors (the
        usual case: params and gradient buffers are updated in place)."""
        ts = [tensors[k] for k in self.names]
        if not all(t.is_contiguous() for t in ts):
            return _rows(tensors, self.names)
        key = tuple((id(t), t.data_ptr()) for t in ts)
        if key not in self._views:
            if len(self._views) > 4:
                self._views.clear()
            self._views[key] = (_rows(tensors, self.names), ts)  # ts keeps the ids in use
        return self._views[key][0]


def _rows(tensors: Params, names: list[str]) -> tuple[np.ndarray, ...]:
    """[R, n_k] numpy views sharing memory with the (contiguous) tensors, in ``names`` order."""
    return tuple(
        tensors[k].detach().contiguous().reshape(tensors[k].shape[0], -1).numpy() for k in names
    )


def init_state(
    method: str, params: Params, keys: torch.Tensor, hyper: Hyper
) -> dict[str, torch.Tensor]:
    """Sampler state: RMSprop square averages, or SGNHT momenta (√ε·N(0,1)) and thermostat [R]."""
    if method == "sgld":
        return {}
    if method == "rmsprop_sgld":
        return {f"v.{k}": torch.zeros_like(v) for k, v in params.items()}
    if method == "sgnht":
        st = {}
        for slot, (k, v) in enumerate(sorted(params.items())):
            kk = rng.fold_in(rng.fold_in(keys, _MOMENTUM_TAG), slot)
            st[f"m.{k}"] = rng.normal(kk, tuple(v.shape[1:]), v.dtype) * _b(
                hyper.step_size.sqrt(), v
            )
        st["thermostat"] = hyper.diffusion.clone()
        return st
    raise ValueError(f"unknown sampler {method!r}; choose one of {', '.join(METHODS)}")


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Per-replica sum of squares of a [R, ...] tensor."""
    return t.reshape(t.shape[0], -1).square().sum(1)


def step(
    method: str,
    params: Params,
    grads: Params,
    center: Params,
    state: dict[str, torch.Tensor],
    hyper: Hyper,
    keys: torch.Tensor,
    t: int,
    masks: dict[str, torch.Tensor] | None = None,
    with_norms: bool = False,
) -> tuple[Params, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """One sampler step for all replicas; parameters without a gradient stay where they are.

    ``grads`` holds ∇L_B (the minibatch-mean loss gradient, not yet scaled by nβ) for the sampled
    parameters; ``masks`` (name -> 0/1 tensor broadcastable to the parameter) restricts the update
    elementwise. Returns new params, new state and, if asked, per-replica norms [R] of the
    gradient, localisation, weight-decay and noise terms and the distance ‖w − w*‖ (pre-step).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {', '.join(METHODS)}")
    R = hyper.replicas
    dev = next(iter(params.values())).device
    sq = {n: torch.zeros(R, device=dev) for n in NORM_NAMES} if with_norms else None
    new_p, new_s = dict(params), dict(state)
    kinetic = torch.zeros(R, device=dev)
    numel = 0
    xis = noise(keys, t, {k: params[k] for k in grads})
    for name in sorted(grads):
        w, g, c = params[name], grads[name], center[name]
        eps, nb = _b(hyper.step_size, w), _b(hyper.nbeta, w)
        gam, wd, sig = _b(hyper.gamma, w), _b(hyper.weight_decay, w), _b(hyper.noise_level, w)
        mask = None if masks is None or name not in masks else masks[name].to(w.dtype)
        xi = xis[name]
        grad_term, loc_term, wd_term = nb * g, gam * (w - c), wd * w
        if method == "sgld":
            drift = 0.5 * eps * (grad_term + loc_term + wd_term)
            kick = eps.sqrt() * sig * xi
            delta = kick - drift
            scale = 0.5 * eps
        elif method == "rmsprop_sgld":
            a = hyper.rms_alpha
            v = state[f"v.{name}"] * a + (1 - a) * g.square()
            new_s[f"v.{name}"] = v
            G = 1.0 / (v.sqrt() + hyper.rms_eps)
            scale = 0.5 * eps * G
            kick = (eps * G).sqrt() * sig * xi
            delta = kick - scale * (grad_term + loc_term + wd_term)
        else:
            m = state[f"m.{name}"]
            th = _b(state["thermostat"], w)
            kick = (2.0 * _b(hyper.diffusion, w) * eps).sqrt() * xi
            m = m - eps * (grad_term + loc_term + wd_term) - th * m + kick
            if mask is not None:
                m = m * mask
            new_s[f"m.{name}"] = m
            kinetic = kinetic + _sq(m)
            numel += m[0].numel() if mask is None else int(mask.expand_as(w[0]).sum().item())
            delta, scale = m, eps
        if mask is not None:
            delta = delta * mask
        new_p[name] = w + delta
        if sq is not None:
            mk = mask if mask is not None else 1.0
            sq["grad"] += _sq(scale * grad_term * mk)
            sq["localization"] += _sq(scale * loc_term * mk)
            sq["weight_decay"] += _sq(scale * wd_term * mk)
            sq["noise"] += _sq(kick * mk)
            sq["distance"] += _sq((w - c) * mk)
    if method == "sgnht" and numel:
        new_s["thermostat"] = state["thermostat"] + kinetic / numel - hyper.step_size
    norms = {k: v.sqrt() for k, v in sq.items()} if sq is not None else None
    return new_p, new_s, norms


def potential(loss: torch.Tensor, params: Params, center: Params, hyper: Hyper) -> torch.Tensor:
    """U(w) = nβ·L_B(w) + (γ/2)‖w − w*‖² + (ω/2)‖w‖² per replica (the SGLD target, for MALA)."""
    u = hyper.nbeta * loss
    for k, w in params.items():
        u = u + 0.5 * hyper.gamma * _sq(w - center[k]) + 0.5 * hyper.weight_decay * _sq(w)
    return u


def potential_grad(grads: Params, params: Params, center: Params, hyper: Hyper) -> Params:
    """∇U for the sampled parameters (those present in ``grads``)."""
    return {
        k: _b(hyper.nbeta, g) * g
        + _b(hyper.gamma, g) * (params[k] - center[k])
        + _b(hyper.weight_decay, g) * params[k]
        for k, g in grads.items()
    }


def mala_log_accept(
    u_old: torch.Tensor,
    gu_old: Params,
    w_old: Params,
    u_new: torch.Tensor,
    gu_new: Params,
    w_new: Params,
    hyper: Hyper,
) -> torch.Tensor:
    """log min(1, MH ratio) of an SGLD move w_old -> w_new viewed as a MALA proposal, per replica.

    The proposal is N(w − (ε/2)∇U(w), ε·σ²·I); the ratio uses the potentials and gradients at both
    ends (from consecutive minibatches, as devinterp 2.0 does), so it measures discretisation error.
    """
    var = hyper.step_size * hyper.noise_level.square()
    fwd = torch.zeros_like(u_old)
    bwd = torch.zeros_like(u_old)
    for k, g_old in gu_old.items():
        e = _b(hyper.step_size, g_old)
        fwd = fwd + _sq(w_new[k] - w_old[k] + 0.5 * e * g_old)
        bwd = bwd + _sq(w_old[k] - w_new[k] + 0.5 * e * gu_new[k])
    log_r = -(u_new - u_old) - (bwd - fwd) / (2.0 * var)
    return torch.clamp(log_r, max=0.0)


def default_nbeta(batch_size: int) -> float:
    """devinterp's default nβ = B / ln B."""
    return batch_size / math.log(batch_size)

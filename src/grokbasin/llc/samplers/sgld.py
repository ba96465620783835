"""SGLD, devinterp 1.3.2's update (SPEC §3.3), as three implementations of one kernel signature:

    Δw = −(ε/2)·(nβ·∇L_B(w) + γ(w − w*) + ω·w) + √ε·σ·ξ,    ξ ~ N(0, I), σ = noise level.

``REFERENCE`` is the plain functional update (masks and norms supported). ``FUSED_CPU`` and
``FUSED_TORCH`` rewrite it as w ← a·w + b·w* + c·∇L_B + s·ξ with per-replica constants
a = 1 − ε(γ+ω)/2, b = εγ/2, c = −εnβ/2, s = √ε·σ (b·w* precomputed once) and update the state's
parameters in place with no per-step tensors: on a CPU one compiled loop per replica draws ξ and
applies the update (``cpu_kernels.sgld_update``); elsewhere a preallocated ``rng.NormalStream``
and three in-place passes per tensor. ξ is the same stream (:func:`base.noise`) in all three.
With 0/1 masks (restricted LLC) the fused kernels then copy w* back into the masked-out entries
(one scatter over those entries only), so they stay exactly at w* as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from grokbasin import rng
from grokbasin.llc.samplers.base import (
    NOISE_TAG,
    Info,
    Kernel,
    Params,
    Setup,
    State,
    b,
    forces,
    mask_of,
    split,
    step_start,
)


def init(params: Params, setup: Setup) -> State:
    """SGLD has no state beyond the parameters."""
    return State(params, setup)


def step(
    state: State, grads: Params, t: int, loss: torch.Tensor | None = None
) -> tuple[State, Info]:
    """One reference SGLD step for all replicas; parameters without a gradient stay put."""
    s, params = state.setup, state.params
    norms, new_p, _, xis = step_start(state, grads, t)
    for name in sorted(grads):
        w, c = params[name], s.center[name]
        f = forces(s.hyper, w, grads[name], c)
        mask = mask_of(s, name, w)
        drift = 0.5 * f.eps * f.total
        kick = f.eps.sqrt() * f.sigma * xis[name]
        delta = kick - drift
        if mask is not None:
            delta = delta * mask
        new_p[name] = w + delta
        norms.add(f, 0.5 * f.eps, kick, w, c, mask)
    return State(new_p, s, state.slots), norms.info()


@dataclass
class _Fused:
    """Constants of the fused update (see the module docstring)."""

    names: list[str]
    keys: torch.Tensor  # the noise stream's keys
    bc: Params  # b·w*
    a: Params  # broadcast views of the [R] constants, for the torch path
    c: Params
    s: Params
    acs: tuple | None = None  # numpy a, c, s for the compiled path
    starts: rng.StreamStarts | None = None
    row: np.ndarray | None = None
    drift0: tuple | None = None  # numpy rows of b·w*
    param_rows: tuple | None = None  # numpy rows of the state's parameters (updated in place)
    grad_rows: tuple | None = None  # numpy rows of the state's gradient buffers
    stream: rng.NormalStream | None = None  # built on the first torch-path step
    stream_args: tuple = ()
    # restricted LLC, per masked tensor: replicas frozen whole (rows, their w*) and the flat
    # positions of partly frozen replicas where m = 0 (positions, w* there)
    frozen: dict[str, tuple[torch.Tensor, ...]] | None = None


def _fused_init(params: Params, setup: Setup, compiled: bool) -> State:
    names = sorted(setup.names)
    first = params[names[0]]
    R, dev = first.shape[0], first.device
    h, center = setup.hyper, setup.center
    a = 1.0 - 0.5 * h.step_size * (h.gamma + h.weight_decay)
    c, s = -0.5 * h.step_size * h.nbeta, h.step_size.sqrt() * h.noise_level
    bc = {k: b(0.5 * h.step_size * h.gamma, params[k]) * center[k] for k in names}
    grads = {k: torch.empty_like(params[k]) for k in names}
    k = _Fused(
        names,
        rng.fold_in(setup.keys, NOISE_TAG),
        bc,
        {k: b(a, params[k]) for k in names},
        {k: b(c, params[k]) for k in names},
        {k: b(s, params[k]) for k in names},
    )
    n = sum(params[k][0].numel() for k in names)
    if compiled:
        k.starts = rng.StreamStarts(k.keys)
        k.acs = tuple(v.to(first.dtype).contiguous().numpy() for v in (a, c, s))
        k.row = torch.empty(2 * ((n + 1) // 2), dtype=first.dtype).numpy()
        k.drift0, k.param_rows, k.grad_rows = (_rows(x, names) for x in (bc, params, grads))
    k.stream_args = (R, n, dev, first.dtype)
    if setup.masks is not None:
        k.frozen = {}
        for n in names:
            m = mask_of(setup, n, params[n])
            if m is not None:
                off = (m == 0).reshape(m.shape[0], -1)
                whole = off.all(1)
                rows = whole.nonzero().flatten()
                at = (off & ~whole[:, None]).reshape(-1).nonzero().flatten()
                c = center[n]
                k.frozen[n] = (rows, c[rows].clone(), at, c.reshape(-1)[at].clone())
    return State(params, setup, grads=grads, consts=k)


def _restore(state: State, k: _Fused) -> None:
    """Masked-out weights (m = 0) back to w*, exactly, in place: a restricted LLC keeps the fused
    update plus one copy of its frozen entries only (whole replicas' rows at once; nothing for
    all-ones masks)."""
    for n, (rows, w_rows, at, w_at) in (k.frozen or {}).items():
        if rows.numel():
            state.params[n].index_copy_(0, rows, w_rows)
        if at.numel():
            state.params[n].view(-1).index_copy_(0, at, w_at)


def _fused_cpu_step(state: State, grads: Params, t: int, loss=None) -> tuple[State, Info]:
    """The compiled update (in place)."""
    from grokbasin.llc import cpu_kernels

    k: _Fused = state.consts
    own = state.grads is not None and all(grads[n] is state.grads[n] for n in k.names)
    g_rows = k.grad_rows if own else _rows(grads, k.names)
    starts = k.starts(t).contiguous().numpy().view(np.uint64)
    cpu_kernels.sgld_update(k.param_rows, g_rows, k.drift0, *k.acs, starts, k.row)
    _restore(state, k)
    return state, {}


def _fused_torch_step(state: State, grads: Params, t: int, loss=None) -> tuple[State, Info]:
    """The same update as three in-place torch passes per tensor."""
    k: _Fused = state.consts
    if k.stream is None:
        k.stream = rng.NormalStream(*k.stream_args)
    xi = split(k.stream(k.keys, t), k.names, state.params)
    for n in k.names:
        w = torch.addcmul(k.bc[n], state.params[n], k.a[n], out=state.params[n])
        w.addcmul_(grads[n], k.c[n]).addcmul_(xi[n], k.s[n])
    _restore(state, k)
    return state, {}


def _rows(tensors: Params, names: list[str]) -> tuple[np.ndarray, ...]:
    """[R, n_k] numpy views sharing memory with the (contiguous) tensors, in ``names`` order."""
    return tuple(
        tensors[k].detach().contiguous().reshape(tensors[k].shape[0], -1).numpy() for k in names
    )


def _plain(params: Params, setup: Setup) -> bool:
    """The fused update reports no norms; masked tensors must be contiguous (:func:`_restore`
    writes through a flat view)."""
    masked = setup.masks or {}
    return not setup.norms and all(params[k].is_contiguous() for k in masked if k in params)


def _compiles(params: Params, setup: Setup) -> bool:
    from grokbasin.llc import cpu_kernels

    ps = [params[k] for k in setup.names]
    return (
        _plain(params, setup)
        and cpu_kernels.available()
        and ps[0].device.type == "cpu"
        and len({p.dtype for p in ps}) == 1
        and all(p.is_contiguous() for p in ps)
    )


REFERENCE = Kernel("sgld", init, step)
FUSED_CPU = Kernel(
    "sgld/fused-cpu", lambda p, s: _fused_init(p, s, True), _fused_cpu_step, _compiles, True
)
FUSED_TORCH = Kernel(
    "sgld/fused-torch", lambda p, s: _fused_init(p, s, False), _fused_torch_step, _plain, True
)
KERNELS = (FUSED_CPU, FUSED_TORCH, REFERENCE)  # fastest first; the reference applies always

"""SGNHT (devinterp's ``SGNHT``, Ding et al. 2014): momentum m ← m − ε·(nβ∇L_B + γ(w − w*) + ω·w)
− ξ_t·m + √(2Aε)·ξ, w ← w + m, thermostat ξ_t ← ξ_t + mean(m²) − ε (per replica; A the diffusion
factor; m starts at √ε·N(0, I)). devinterp's SGNHT has no localisation; adding the prior's
gradient to the force is the natural extension and is what γ = ω = 0 reduces to. With masks the
mean runs over each replica's unmasked entries."""

from __future__ import annotations

import torch

from grokbasin import rng
from grokbasin.llc.samplers.base import (
    Info,
    Kernel,
    Params,
    Setup,
    State,
    b,
    forces,
    mask_of,
    sq,
    step_start,
)

_MOMENTUM_TAG = 0x3077


def init(params: Params, setup: Setup) -> State:
    """Momenta √ε·N(0, I) from the chain keys and the thermostat ξ_t = A, per replica."""
    h, slots = setup.hyper, {}
    for slot, k in enumerate(sorted(setup.names)):
        v = params[k]
        kk = rng.fold_in(rng.fold_in(setup.keys, _MOMENTUM_TAG), slot)
        slots[f"m.{k}"] = rng.normal(kk, tuple(v.shape[1:]), v.dtype) * b(h.step_size.sqrt(), v)
    slots["thermostat"] = h.diffusion.clone()
    return State(params, setup, slots)


def step(
    state: State, grads: Params, t: int, loss: torch.Tensor | None = None
) -> tuple[State, Info]:
    """One momentum + thermostat step for all replicas."""
    s, params, h = state.setup, state.params, state.setup.hyper
    R, dev = h.replicas, next(iter(params.values())).device
    norms, new_p, new_s, xis = step_start(state, grads, t)
    kinetic, numel = torch.zeros(R, device=dev), torch.zeros(R, device=dev)
    for name in sorted(grads):
        w, c = params[name], s.center[name]
        f = forces(h, w, grads[name], c)
        mask = mask_of(s, name, w)
        m, th = state.slots[f"m.{name}"], b(state.slots["thermostat"], w)
        kick = (2.0 * b(h.diffusion, w) * f.eps).sqrt() * xis[name]
        m = m - f.eps * f.total - th * m + kick
        if mask is not None:
            m = m * mask
        new_s[f"m.{name}"] = m
        kinetic = kinetic + sq(m)
        numel += w[0].numel() if mask is None else mask.expand_as(w).reshape(R, -1).sum(1)
        new_p[name] = w + (m if mask is None else m * mask)
        norms.add(f, f.eps, kick, w, c, mask)
    th = state.slots["thermostat"]
    new_s["thermostat"] = torch.where(numel > 0, th + kinetic / numel - h.step_size, th)
    return State(new_p, s, new_s), norms.info()


KERNELS = (Kernel("sgnht", init, step),)

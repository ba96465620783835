"""RMSprop-SGLD (devinterp's ``rmsprop_sgld``, Li et al. 2016): V ← αV + (1−α)g², g = ∇L_B (the
raw minibatch gradient), G = 1/(√V + eps); the drift (ε/2)·G·(nβ∇L_B + γ(w − w*) + ω·w) and the
noise √(εG)·σ·ξ."""

from __future__ import annotations

import torch

from grokbasin.llc.samplers.base import (
    Info,
    Kernel,
    Params,
    Setup,
    State,
    forces,
    mask_of,
    step_start,
)


def init(params: Params, setup: Setup) -> State:
    """Square averages V = 0 for every sampled parameter."""
    return State(params, setup, {f"v.{k}": torch.zeros_like(params[k]) for k in setup.names})


def step(
    state: State, grads: Params, t: int, loss: torch.Tensor | None = None
) -> tuple[State, Info]:
    """One preconditioned step for all replicas."""
    s, params, h = state.setup, state.params, state.setup.hyper
    norms, new_p, new_s, xis = step_start(state, grads, t)
    for name in sorted(grads):
        w, g, c = params[name], grads[name], s.center[name]
        f = forces(h, w, g, c)
        mask = mask_of(s, name, w)
        v = state.slots[f"v.{name}"] * h.rms_alpha + (1 - h.rms_alpha) * g.square()
        new_s[f"v.{name}"] = v
        G = 1.0 / (v.sqrt() + h.rms_eps)
        scale = 0.5 * f.eps * G
        kick = (f.eps * G).sqrt() * f.sigma * xis[name]
        delta = kick - scale * f.total
        if mask is not None:
            delta = delta * mask
        new_p[name] = w + delta
        norms.add(f, scale, kick, w, c, mask)
    return State(new_p, s, new_s), norms.info()


KERNELS = (Kernel("rmsprop_sgld", init, step),)

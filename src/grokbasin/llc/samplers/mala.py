"""MALA acceptance as a wrapper around an SGLD kernel: each SGLD move w → w' is scored as a
Metropolis-adjusted Langevin proposal (the move itself is not changed), which measures the
discretisation error of the step size (devinterp 2.0's diagnostic)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grokbasin.llc.samplers.base import Info, Kernel, Params, SamplerHyper, Setup, b, sq


def potential(loss: torch.Tensor, params: Params, center: Params, hyper: SamplerHyper):
    """U(w) = nβ·L_B(w) + (γ/2)‖w − w*‖² + (ω/2)‖w‖² per replica (the SGLD target)."""
    u = hyper.nbeta * loss
    for k, w in params.items():
        u = u + 0.5 * hyper.gamma * sq(w - center[k]) + 0.5 * hyper.weight_decay * sq(w)
    return u


def potential_grad(grads: Params, params: Params, center: Params, hyper: SamplerHyper) -> Params:
    """∇U for the sampled parameters (those present in ``grads``)."""
    return {
        k: b(hyper.nbeta, g) * g
        + b(hyper.gamma, g) * (params[k] - center[k])
        + b(hyper.weight_decay, g) * params[k]
        for k, g in grads.items()
    }


def log_accept(
    u_old: torch.Tensor,
    gu_old: Params,
    w_old: Params,
    u_new: torch.Tensor,
    gu_new: Params,
    w_new: Params,
    hyper: SamplerHyper,
) -> torch.Tensor:
    """log min(1, MH ratio) of an SGLD move w_old -> w_new viewed as a MALA proposal, per replica.

    The proposal is N(w − (ε/2)∇U(w), ε·σ²·I); the ratio uses the potentials and gradients at both
    ends (from consecutive minibatches, as devinterp 2.0 does), so it measures discretisation error.
    """
    var = hyper.step_size * hyper.noise_level.square()
    fwd = torch.zeros_like(u_old)
    bwd = torch.zeros_like(u_old)
    for k, g_old in gu_old.items():
        e = b(hyper.step_size, g_old)
        fwd = fwd + sq(w_new[k] - w_old[k] + 0.5 * e * g_old)
        bwd = bwd + sq(w_old[k] - w_new[k] + 0.5 * e * gu_new[k])
    log_r = -(u_new - u_old) - (bwd - fwd) / (2.0 * var)
    return torch.clamp(log_r, max=0.0)


@dataclass
class MalaState:
    """The wrapped kernel's state and (U, ∇U, w) at the previous step's start."""

    inner: object
    setup: Setup
    prev: tuple | None = None

    @property
    def params(self) -> Params:
        return self.inner.params

    @property
    def grads(self) -> Params | None:
        return self.inner.grads


def wrap(kernel: Kernel) -> Kernel:
    """``kernel`` whose info also carries "mala_accept" [R]: the acceptance probability of the
    previous move (from the second step on; NaN-free, 0 for a diverged chain)."""

    def init(params: Params, setup: Setup) -> MalaState:
        return MalaState(kernel.init(params, setup), setup)

    def step(state: MalaState, grads: Params, t: int, loss: torch.Tensor) -> tuple:
        s = state.setup
        w = {k: state.params[k] for k in s.names}
        u = potential(loss, w, s.center, s.hyper)
        gu = potential_grad(grads, state.params, s.center, s.hyper)
        info: Info = {}
        if state.prev is not None:
            la = log_accept(*state.prev, u, gu, w, s.hyper)
            info["mala_accept"] = torch.nan_to_num(la.exp(), nan=0.0)
        prev = (u, gu, {k: v.clone() for k, v in w.items()})  # the kernel may move w in place
        inner, inner_info = kernel.step(state.inner, grads, t, loss=loss)
        return MalaState(inner, s, prev), {**inner_info, **info}

    return Kernel(f"mala({kernel.name})", init, step, kernel.applies, kernel.in_place)

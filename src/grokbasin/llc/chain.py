"""The chain loop: all replicas of a target advance together under one sampler kernel.

The loss at step t is the minibatch loss at the pre-step parameters (as devinterp records it);
a target's observables (``llc.observables``) are evaluated at the same parameters, at draw steps
only, without gradients.
A chain whose loss turns non-finite is reset to w* and frozen; its later draws are NaN and the
other chains continue untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grokbasin.llc.samplers import NORM_NAMES, Kernel
from grokbasin.llc.samplers.base import ChainState, Params
from grokbasin.llc.targets import Target


def run(
    target: Target,
    kernel: Kernel,
    state: ChainState,
    keys: torch.Tensor,
    burnin: int,
    draws: int,
    thin: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> Record:
    """burnin + draws·thin steps of ``kernel`` from ``state``; the recorded losses and info."""
    batches = target.batcher(keys)
    rec = Record(target.params0, burnin, draws, thin, target.observed, target.per_sample)
    observe = target.observe if target.observed else None
    for t in range(rec.steps):
        loss, grads = target.loss_and_grad(state.params, batches(t), state.grads)
        loss = rec.observe(t, loss.detach().float(), state.params, grads)
        if observe is not None and rec.is_draw(t):
            with torch.no_grad():
                rec.record_observables(t, *observe(state.params))
        with torch.no_grad():
            state, info = kernel.step(state, grads, t, loss=loss)
            rec.after_step(state.params, info)
        if on_step is not None:
            on_step(1)
    return rec


class Record:
    """Draw losses [R, draws], the first minibatch loss, which chains are alive, per-step norms,
    the summed MALA acceptance and the observables' draws, filled in by :func:`run`."""

    def __init__(
        self,
        center: Params,
        burnin: int,
        draws: int,
        thin: int,
        observed: dict[str, int] | None = None,
        per_sample: tuple[str, ...] = (),
    ):
        first = next(iter(center.values()))
        R, dev = first.shape[0], first.device
        self.center = {k: v.detach() for k, v in center.items()}
        self.burnin, self.thin, self.steps = burnin, thin, burnin + draws * thin
        self.traces = torch.full((R, draws), float("nan"), device=dev)
        self.alive = torch.ones(R, dtype=torch.bool, device=dev)
        self.first = torch.zeros(R, device=dev)
        self.norms: dict[str, list[torch.Tensor]] = {k: [] for k in NORM_NAMES}
        self.accept = torch.zeros(R, device=dev)
        nan = float("nan")
        self.obs = {k: torch.full((R, draws), nan, device=dev) for k in observed or {}}
        self.samples = {
            k: torch.full((R, draws, (observed or {})[k]), nan, device=dev) for k in per_sample
        }

    def is_draw(self, t: int) -> bool:
        """Whether step t is recorded (after burn-in, every thin-th step)."""
        return t >= self.burnin and (t - self.burnin) % self.thin == 0

    def observe(self, t: int, loss: torch.Tensor, params: Params, grads: Params) -> torch.Tensor:
        """Freeze chains whose loss just turned non-finite (at w*, zero gradient); record."""
        bad = ~torch.isfinite(loss) & self.alive
        if bool(bad.any()):  # the other chains never see them
            self.alive &= ~bad
            self._reset(params)
            for g in grads.values():
                g[~self.alive] = 0.0
        if t == 0:
            self.first = loss.clone()
        if self.is_draw(t):
            self.traces[:, (t - self.burnin) // self.thin] = torch.where(
                self.alive, loss, torch.nan
            )
        return loss

    def record_observables(
        self, t: int, means: dict[str, torch.Tensor], samples: dict[str, torch.Tensor]
    ) -> None:
        """Store draw t's observables (NaN for frozen chains)."""
        d = (t - self.burnin) // self.thin
        for k, v in means.items():
            self.obs[k][:, d] = torch.where(self.alive, v, torch.nan)
        for k, v in samples.items():
            self.samples[k][:, d] = torch.where(self.alive[:, None], v, torch.nan)

    def after_step(self, params: Params, info: dict) -> None:
        """Keep frozen chains at w*; collect the step's norms and MALA acceptance."""
        if not bool(self.alive.all()):
            self._reset(params)
        for k, v in info.get("norms", {}).items():
            self.norms[k].append(v)
        if "mala_accept" in info:
            self.accept += info["mala_accept"]

    def _reset(self, params: Params) -> None:
        """Put the dead replicas back at w*, in place."""
        dead = ~self.alive
        for k, v in params.items():
            v[dead] = self.center[k][dead]

"""The LLC estimator: run a sampler for every replica at once and turn loss traces into λ̂.

λ̂ = nβ·(mean draw loss − L_n(w*)) per chain (SPEC §3.3), where the draw losses are the minibatch
losses the sampler sees after burn-in (every ``thin``-th step) and L_n(w*) is the full training
loss at the centre (``baseline='full'``) or, to match devinterp 1.3.2, the chain's first
minibatch loss at w* (``baseline='devinterp'``).

Replica layout used by :func:`estimate_llc` and the trajectory: r = (g·B + b)·C + c for group g
(one centre w*: a checkpoint × training replica), temperature b (of B n·β values) and chain c (of
C). A chain's random streams depend on (seed, group id, chain) only, not on b: the temperatures
of one chain share noise and minibatches (common random numbers), which makes the temperature
regression far less noisy, and no replica's trace depends on what else was batched with it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from grokbasin import interrupt, rng, sampler_registry
from grokbasin.llc import chain, samplers, shards
from grokbasin.llc.observables import TRACE_BUDGET_MB, check_trace_budget
from grokbasin.llc.samplers import SamplerHyper
from grokbasin.llc.targets import Target


@dataclass(frozen=True)
class SampleSettings:
    """How :func:`sample` runs every chain: its length, the sampler, the baseline and what it
    records (the per-replica numbers are in ``SamplerHyper``)."""

    burnin: int
    draws: int
    thin: int = 1
    method: str = "sgld"
    baseline: str = "full"
    record_norms: bool = False
    mala: bool = False
    fused: bool = True


@dataclass
class SampleResult:
    """Per-replica output of :func:`sample` (numpy arrays, replica axis first)."""

    n: int
    nbeta: np.ndarray  # [R]
    traces: np.ndarray  # [R, D] draw losses (NaN after a chain diverged)
    init_loss: np.ndarray  # [R] the baseline L_n(w*) used
    full_init_loss: np.ndarray  # [R] full training loss at w*
    first_batch_loss: np.ndarray  # [R] loss of the chain's first minibatch at w*
    diverged: np.ndarray  # [R] bool: a non-finite loss was met (chain frozen at w* afterwards)
    norms: dict[str, np.ndarray] | None = None  # name -> [R, steps]
    mala_accept: np.ndarray | None = None  # [R] mean MALA acceptance probability over all steps
    observables: dict[str, np.ndarray] | None = None  # name -> [R, D] mean loss per draw
    observables_init: dict[str, np.ndarray] | None = None  # name -> [R] at w*
    sample_losses: dict[str, np.ndarray] | None = None  # name -> [R, D, m] float32 per sample

    @classmethod
    def concat(cls, parts: list[SampleResult]) -> SampleResult:
        """Results of consecutive replica ranges joined along the replica axis."""

        def cat(name: str):
            vals = [getattr(r, name) for r in parts]
            if vals[0] is None:
                return None
            if isinstance(vals[0], dict):
                return {k: np.concatenate([v[k] for v in vals]) for k in vals[0]}
            return np.concatenate(vals)

        names = [f.name for f in fields(cls) if f.name != "n"]
        return cls(n=parts[0].n, **{k: cat(k) for k in names})

    @property
    def mean_loss(self) -> np.ndarray:
        return self.traces.mean(axis=1)

    @property
    def llc(self) -> np.ndarray:
        """λ̂ per replica: nβ·(mean draw loss − L_n(w*)); NaN for a diverged chain."""
        return self.nbeta * (self.mean_loss - self.init_loss)

    @property
    def running(self) -> np.ndarray:
        """[R, D] online estimate after each draw: nβ·(running mean loss − L_n(w*))."""
        D = self.traces.shape[1]
        cum = np.cumsum(self.traces, axis=1) / np.arange(1, D + 1)
        return self.nbeta[:, None] * (cum - self.init_loss[:, None])

    @property
    def wbic(self) -> np.ndarray:
        """n·(mean draw loss) per replica: WBIC when nβ = n/ln n (β = 1/ln n), as devinterp 2.0."""
        return self.n * self.mean_loss


def sample(
    target: Target,
    hyper: SamplerHyper,
    keys: torch.Tensor,
    burnin: int,
    draws: int,
    thin: int = 1,
    method: str = "sgld",
    baseline: str = "full",
    record_norms: bool = False,
    mala: bool = False,
    on_step: Callable[[float], None] | None = None,
    fused: bool = True,
    cpu_workers: int | None = None,
    trace_budget_mb: float = TRACE_BUDGET_MB,
) -> SampleResult:
    """Run burn-in + draws·thin sampler steps for all R replicas together; record draw losses.

    See ``llc.chain`` for what a step records and how diverged chains are frozen. ``method``
    names a sampler of ``llc.samplers``; its fastest applicable kernel runs (``fused=False``
    forces the reference update: same update and noise). Before any chain starts, the loss runs
    once on a 1-replica shard and a target whose output does not follow its shard is refused.

    On a CPU the replicas are split into ``cpu_workers`` contiguous shards (default: torch's
    thread count; ``llc.shards``). Results do not depend on the sharding: each replica has its
    own streams. ``on_step`` receives the fraction of all replica-steps done since its last call.
    Ctrl-C stops every shard within one step (``grokbasin.interrupt``).

    A target with observables (``llc.observables``) also records their losses at every draw;
    per-sample traces larger than ``trace_budget_mb`` are refused before any step.
    """
    check_trace_budget(target.replicas, draws, target.observed, target.per_sample, trace_budget_mb)
    if baseline not in ("full", "devinterp"):
        raise ValueError(f"baseline must be 'full' or 'devinterp', got {baseline!r}")
    samplers.check(method, mala)
    check_shapes(target, keys)
    settings = SampleSettings(burnin, draws, thin, method, baseline, record_norms, mala, fused)

    cancel = threading.Event()

    def run(part: tuple, share: float) -> SampleResult:
        def tick(k: float) -> None:
            interrupt.checker(cancel)
            if on_step is not None:
                on_step(k * share)

        return _sample(*part, settings, tick)

    dev = next(iter(target.params0.values())).device
    parts = shards.map_ranges(run, (target, hyper, keys), target.replicas, dev, cpu_workers, cancel)
    return parts[0] if len(parts) == 1 else SampleResult.concat(parts)


def check_shapes(target: Target, keys: torch.Tensor) -> None:
    """Refuse, in one line, a target whose loss on a 1-replica shard is not one value per
    replica: a forward or potential that captured per-replica tensors instead of taking them
    from the target's data (``aux=``) broadcasts or fails there, whatever the thread count."""
    one = target.shard(0, 1)
    try:
        with torch.no_grad():
            loss = one.loss(one.params0, one.batcher(keys[:1])(0))
    except (RuntimeError, IndexError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{target.label}: the loss fails on a 1-replica shard ({msg}); per-replica tensors "
            "must come from the target's data (aux= or per_replica), not a closure"
        ) from None
    if tuple(loss.shape) != (1,):
        raise ValueError(
            f"{target.label}: the loss of a 1-replica shard has shape {tuple(loss.shape)}, "
            "expected (1,); per-replica tensors must come from the target's data (aux= or "
            "per_replica), not a closure"
        )


def _sample(
    target: Target,
    hyper: SamplerHyper,
    keys: torch.Tensor,
    run: SampleSettings,
    on_step: Callable[[float], None] | None,
) -> SampleResult:
    """:func:`sample` for one shard of replicas, in the calling thread."""
    center = {k: v.detach() for k, v in target.params0.items()}
    params = {k: v.clone() for k, v in center.items()}
    setup = samplers.Setup(center, hyper, keys, tuple(target.names), target.masks, run.record_norms)
    kernel = samplers.select(run.method, params, setup, fast=run.fused, use_mala=run.mala)
    with torch.no_grad():
        full0 = target.full_loss(center).float()
    state = kernel.init(params, setup)
    rec = chain.run(target, kernel, state, keys, run.burnin, run.draws, run.thin, on_step)
    init = full0 if run.baseline == "full" else rec.first
    obs0 = None
    if target.observed:
        with torch.no_grad():
            obs0 = {k: v.double().cpu().numpy() for k, v in target.observe(center)[0].items()}
    return SampleResult(
        n=target.n,
        nbeta=hyper.nbeta.double().cpu().numpy(),
        traces=rec.traces.double().cpu().numpy(),
        init_loss=init.double().cpu().numpy(),
        full_init_loss=full0.double().cpu().numpy(),
        first_batch_loss=rec.first.double().cpu().numpy(),
        diverged=(~rec.alive).cpu().numpy(),
        norms={k: torch.stack(v, 1).cpu().numpy() for k, v in rec.norms.items()}
        if run.record_norms
        else None,
        mala_accept=(rec.accept / max(rec.steps - 1, 1)).cpu().numpy() if run.mala else None,
        observables={k: v.double().cpu().numpy() for k, v in rec.obs.items()} if obs0 else None,
        observables_init=obs0,
        sample_losses={k: v.cpu().numpy() for k, v in rec.samples.items()} if obs0 else None,
    )


def chain_keys(
    seed: int,
    group_ids: Sequence[Sequence[int]],
    nbetas: int,
    chains: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Keys [G·B·C] in replica order; each depends on (seed, group id ints, chain) only."""
    base = rng.key([seed], device)
    out = []
    for ids in group_ids:
        k = base
        for i in ids:
            k = rng.fold_in(k, int(i))
        ks = torch.cat([rng.fold_in(k, c) for c in range(chains)])  # [C]
        out.append(ks.repeat(nbetas))  # same chain keys at every temperature
    return torch.cat(out)


def temperature_regression(
    mean_loss: np.ndarray, init_loss: np.ndarray, nbeta: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept of n·(Ē_β − L_n(w*)) against 1/β over the last axis (temperatures).

    Here n is the training-set size and β the inverse temperature, so nβ is the sampler's n·β and
    1/β = n/(nβ). Theory: n(E_β[L_n] − L_n(w*)) ≈ λ/β + c, so the slope estimates λ free of the
    O(1) term c that biases the plain estimate nβ(Ē − L*) = λ + c·nβ/n. Arrays [..., B].
    """
    x = n / np.asarray(nbeta, dtype=float)
    y = n * (np.asarray(mean_loss, float) - np.asarray(init_loss, float))
    x = np.broadcast_to(x, y.shape)
    xm, ym = x.mean(-1, keepdims=True), y.mean(-1, keepdims=True)
    slope = ((x - xm) * (y - ym)).sum(-1) / ((x - xm) ** 2).sum(-1)
    return slope, (ym[..., 0] - slope * xm[..., 0])


@dataclass
class Estimate:
    """Grouped LLC estimates: arrays shaped [G, B, C] (groups, temperatures, chains)."""

    result: SampleResult
    groups: int
    nbetas: np.ndarray  # [B]
    chains: int
    diagnostics: list[dict] = field(default_factory=list)  # per (g, b), row-major

    def _gbc(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.groups, len(self.nbetas), self.chains, *a.shape[1:])

    @property
    def llc(self) -> np.ndarray:
        return self._gbc(self.result.llc)

    @property
    def llc_mean(self) -> np.ndarray:
        """[G, B] mean over healthy (finite) chains."""
        return np.nanmean(self.llc, axis=-1)

    @property
    def llc_std(self) -> np.ndarray:
        return (
            np.nanstd(self.llc, axis=-1, ddof=1)
            if self.chains > 1
            else np.zeros_like(self.llc_mean)
        )

    @property
    def regressed(self) -> np.ndarray | None:
        """[G, C] temperature-regression λ per chain (None with fewer than two temperatures)."""
        if len(self.nbetas) < 2:
            return None
        ml = np.moveaxis(self._gbc(self.result.mean_loss), 1, -1)  # [G, C, B]
        il = np.moveaxis(self._gbc(self.result.init_loss), 1, -1)
        return temperature_regression(ml, il, self.nbetas, self.result.n)[0]


def estimate_llc(
    target: Target,
    *,
    groups: int = 1,
    chains: int = 4,
    nbetas: Sequence[float] | None = None,
    step_size: float | Sequence[float] = 1e-4,
    gamma: float | Sequence[float] = 5.0,
    weight_decay: float = 0.0,
    noise_level: float = 1.0,
    burnin: int = 200,
    draws: int = 400,
    thin: int = 1,
    seed: int = 0,
    method: str = "sgld",
    options: Mapping[str, float] | None = None,
    baseline: str = "full",
    record_norms: bool = False,
    mala: bool = False,
    group_ids: Sequence[Sequence[int]] | None = None,
    diagnose: bool = True,
    on_step: Callable[[int], None] | None = None,
    fused: bool = True,
    cpu_workers: int | None = None,
    trace_budget_mb: float = TRACE_BUDGET_MB,
) -> Estimate:
    """λ̂ for a target laid out as groups × temperatures × chains, in one batched sampler run.

    ``nbetas`` default: [B/ln B] with B the target's batch size (devinterp). step_size and gamma
    may be per-replica sequences (an ε×γ grid laid out by the caller). ``options`` are the
    sampler's own hyperparameters (``grokbasin.sampler_registry``; unset ones take their
    defaults). Diagnostics from
    ``grokbasin.llc.diagnostics.diagnose`` are attached per (group, temperature). On a CPU the
    replicas run in ``cpu_workers`` parallel shards (default: torch's thread count; see
    :func:`sample`).
    """
    nb = np.asarray(
        nbetas if nbetas is not None else [samplers.default_nbeta(max(2, target.batch_size))],
        dtype=float,
    )
    B = len(nb)
    R = groups * B * chains
    if target.replicas != R:
        raise ValueError(
            f"target has {target.replicas} replicas; expected groups·nbetas·chains = {R}"
        )
    dev = next(iter(target.params0.values())).device
    per_rep_nb = torch.tensor(np.tile(np.repeat(nb, chains), groups), dtype=torch.float32)
    hyper = samplers.make_hyper(
        R,
        _vec(step_size),
        per_rep_nb,
        _vec(gamma),
        weight_decay,
        noise_level,
        **sampler_registry.resolve(method, options),
        device=dev,
    )
    keys = chain_keys(seed, group_ids or [[g] for g in range(groups)], B, chains, dev)
    res = sample(
        target,
        hyper,
        keys,
        burnin=burnin,
        draws=draws,
        thin=thin,
        method=method,
        baseline=baseline,
        record_norms=record_norms,
        mala=mala,
        on_step=on_step,
        fused=fused,
        cpu_workers=cpu_workers,
        trace_budget_mb=trace_budget_mb,
    )
    est = Estimate(res, groups, nb, chains)
    if diagnose:
        est.diagnostics = run_diagnostics(res, groups * B, chains)
    return est


def _vec(v: float | Sequence[float]) -> float | torch.Tensor:
    return v if isinstance(v, int | float) else torch.tensor(list(v), dtype=torch.float32)


def run_diagnostics(res: SampleResult, n_groups: int, chains: int) -> list[dict]:
    """A2's ``diagnose`` on traces reshaped to [groups, chains, draws]."""
    from grokbasin.llc.diagnostics import diagnose

    D = res.traces.shape[1]
    traces = res.traces.reshape(n_groups, chains, D)
    init = res.init_loss.reshape(n_groups, chains)
    nbeta = res.nbeta.reshape(n_groups, chains)[:, 0]
    return diagnose(traces, init, nbeta)


def nbeta_n_over_log_n(n: int) -> float:
    """The theory's nβ = n/ln n (β* = 1/ln n)."""
    return n / math.log(n)

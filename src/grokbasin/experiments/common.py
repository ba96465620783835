"""Shared steps of the named experiments: shared grid pieces, expand a grid, run it through the
sweep engine, read results back (LLC rows through ``store.query``), write outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.config import RunConfig
from grokbasin.experiments.experiment import Context, Grid
from grokbasin.experiments.output import finish, out_dir, write_csv  # noqa: F401  (re-exported)
from grokbasin.experiments.sweep import SweepResult, expand, run_configs, sweep_from_dict
from grokbasin.store.query import Want, by_epoch, llc_rows
from grokbasin.store.rundir import RunDir, read_parquet

# ------------------------------------------------------------------ grid pieces shared by paper A

TRAIN_PAPER: dict[str, Any] = {
    "optimizer": "adam",
    "unit": "step",
    "epochs": 100_000,
    "checkpoint_every": 100,
    "batch_size": 128,
    "lr": [1e-4],
    "weight_decay": [1e-5],
    "early_stop": True,
    "early_stop_patience": 10,
    "early_stop_val_acc": 0.99,
}
"""Paper A baseline training exactly as the authors' training.py runs it (SPEC §3.9): Adam lr 1e-4,
wd 1e-5, one random batch of 128 per step, a checkpoint every 100 steps, early stop after 10
checkpoints at val acc ≥ 0.99, cap 100k steps."""

SAMPLER_PAPER: dict[str, Any] = {
    "chains": 3,
    "burnin": 100,
    "draws": 500,
    "step_size": 5e-4,
    "gamma": 5.0,
    "nbeta": 26.4,
    "batch_size": 128,
}
"""Paper A's sampler (authors' code, SPEC §3.3)."""

SAMPLER_PAPER_CALIBRATED: dict[str, Any] = {**SAMPLER_PAPER, "step_size": 2e-3, "gamma": 100.0}
"""The sampler `grokbasin llc calibrate` recommends at p = 53, K = 1024 (paper-fig3 run, epoch
1900, grid ε ∈ {5e-4, 1e-3, 2e-3} × γ ∈ {5, 30, 100} at nβ 26.4 and the paper's 3 × (100 + 500)
steps): the healthy cell closest to its Laplace prediction (docs/paper-scale.md)."""


def sampler_small(**kw: Any) -> dict[str, Any]:
    """The small-scale sampler, calibrated with `grokbasin llc calibrate` on p = 23, K = 192 (and
    p = 23, K = 256): healthy, stationary chains."""
    return {
        "chains": 4,
        "burnin": 300,
        "draws": 300,
        "step_size": 3e-3,
        "gamma": 30.0,
        "nbeta": 300.0,
        "batch_size": 128,
        "checkpoints": "last",
        **kw,
    }


def train_small(epochs: int, every: int, **kw: Any) -> dict[str, Any]:
    """Small-scale training: Adam lr 5e-4, wd 1e-4, batch 128, early stop 2 checkpoints after
    val acc ≥ 0.98."""
    return {
        "epochs": epochs,
        "checkpoint_every": every,
        "batch_size": 128,
        "lr": [5e-4],
        "weight_decay": [1e-4],
        "early_stop": True,
        "early_stop_patience": 2,
        "early_stop_val_acc": 0.98,
        **kw,
    }


# ------------------------------------------------------------------ grids -> configs -> runs


def device_for(grid: Grid, ctx: Context) -> str:
    """The device runs use: the context's, else the grid's ('auto': CUDA if present, else CPU)."""
    from grokbasin.device import resolve

    return resolve(ctx.device or grid.get("device", "cpu"))


def samplers(grid: Grid) -> dict[str, dict[str, Any]]:
    """The grid's named sampler settings, main one first (empty: training only)."""
    return dict(grid.get("samplers") or {})


def grid_configs(
    grid: Grid, ctx: Context, llc: dict[str, Any] | None = None, **over: Any
) -> list[RunConfig]:
    """One config per (grid cell, point, seed) of a grid dict, with sampler ``llc`` if given.

    ``over`` replaces grid keys (base, grid, points, seeds) for one sub-sweep.
    """
    g = {**grid, **over}
    return configs(
        g.get("base", {}),
        g.get("grid"),
        g.get("points"),
        g.get("seeds"),
        llc,
        device_for(grid, ctx),
    )


def run(ctx: Context, cfgs: list[RunConfig], estimate: bool) -> SweepResult:
    """Train (and sample) what is missing through the sweep engine (resumable, deduplicated)."""
    return run_configs(cfgs, ctx.root, estimate, ctx.backend, ctx.workers, None, ctx.progress)


def llc_by_epochs(cfgs: Sequence[RunConfig], root: Path) -> list[dict[int, list[float]]]:
    """Per config: per-chain λ̂ of its sampler at its nβ, by checkpoint epoch (one query)."""
    return [by_epoch(r) for r in llc_rows([Want.of(c, root, None) for c in cfgs])]


def configs(
    base: dict[str, Any],
    grid: dict[str, list[Any]] | None = None,
    points: list[dict[str, Any]] | None = None,
    seeds: list[int] | None = None,
    llc: dict[str, Any] | None = None,
    device: str = "cpu",
) -> list[RunConfig]:
    """Expand a sweep given inline (same structure as a sweep file)."""
    spec: dict[str, Any] = {
        "base": base,
        "grid": grid or {},
        "points": points or [{}],
        "device": device,
    }
    if seeds is not None:
        spec["seeds"] = seeds
    if llc is not None:
        spec["llc"] = llc
    return expand(sweep_from_dict(spec))


def execute(
    cfgs: list[RunConfig], root: Path, estimate: bool, backend: str, workers: int, progress: bool
) -> SweepResult:
    """Train (and sample) what is missing; everything finished is reused (positional shorthand of
    :func:`run` for callers without a Context)."""
    return run_configs(cfgs, root, estimate, backend, workers, None, progress)


def metrics_rows(cfg: RunConfig, root: Path) -> list[dict[str, Any]]:
    """Every metrics.parquet row of a config's run."""
    return read_parquet(RunDir(root / cfg.run_hash()).metrics).to_pylist()


def llc_by_epoch(cfg: RunConfig, root: Path) -> dict[int, list[float]]:
    """Per-chain LLC estimates of this config's sampler setting, by checkpoint epoch."""
    return llc_by_epochs([cfg], root)[0]


def final_llc(
    cfg: RunConfig, root: Path, epoch: int | None = None, by: dict[int, list[float]] | None = None
) -> tuple[float, float]:
    """Mean and std over chains at ``epoch`` or the last estimated checkpoint (nan if none)."""
    by = llc_by_epoch(cfg, root) if by is None else by
    e = max(by, default=None) if epoch is None else epoch
    if e not in by:
        return math.nan, math.nan
    v = np.asarray(by[e])
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def log_linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Fit ln y = a + b·x (positive y only): slope b, intercept a, R² in log space."""
    from grokbasin.report.figures import linear_fit

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(xa) & np.isfinite(ya) & (ya > 0)
    return linear_fit(xa[ok], np.log(ya[ok]))


def solution_epoch(
    rows: Sequence[dict[str, Any]], train_acc: float = 0.99, val_acc: float = 0.95
) -> tuple[int, bool]:
    """The checkpoint that stands for a run's learned solution, and whether it generalised.

    Among checkpoints with train acc ≥ ``train_acc`` and val acc ≥ ``val_acc``, the one with the
    lowest training loss (the most converged generalising point: small runs trained with Adam can
    fall off the solution again later); the last checkpoint when none qualifies.
    """
    ok = [r for r in rows if r["train_acc"] >= train_acc and r["val_acc"] >= val_acc]
    if ok:
        return int(min(ok, key=lambda r: (r["train_loss"], r["epoch"]))["epoch"]), True
    return int(max(r["epoch"] for r in rows)), False


def solution_metrics(
    rows: Sequence[dict[str, Any]],
) -> tuple[int, bool, dict[str, Any]]:
    """(solution epoch, generalised, grokking metrics up to it): a later collapse is not counted."""
    from grokbasin.analysis.grokking import grokking_metrics

    end, ok = solution_epoch(rows)
    return end, ok, grokking_metrics([r for r in rows if r["epoch"] <= end])[0]


def thinned_epochs(have: Sequence[int], dense_until: int, every: int, first: int = 0) -> list[int]:
    """Every checkpoint from ``first`` up to ``dense_until``, then every ``every``-th epoch and
    the last: full resolution where the LLC rises (memorisation), coarser through the slow fall."""
    have = sorted(e for e in have if e >= first)
    keep = {e for e in have if e <= dense_until or e % every == 0}
    return sorted(keep | set(have[-1:]))


def at_thinned(
    cfgs: Sequence[RunConfig], root: Path, dense_until: int, every: int, first: int = 0
) -> list[RunConfig]:
    """Each trained config with its LLC checkpoints set to :func:`thinned_epochs` of its run."""
    out = []
    for c in cfgs:
        have = [int(r["epoch"]) for r in metrics_rows(c, root)]
        eps = ",".join(map(str, thinned_epochs(set(have), dense_until, every, first)))
        out.append(c.model_copy(update={"llc": c.llc.model_copy(update={"checkpoints": eps})}))
    return out


def at_solution(cfgs: Sequence[RunConfig], root: Path) -> list[RunConfig]:
    """Each trained config with its LLC checkpoint set to its :func:`solution_epoch`."""
    out = []
    for c in cfgs:
        e, _ = solution_epoch(metrics_rows(c, root))
        out.append(c.model_copy(update={"llc": c.llc.model_copy(update={"checkpoints": str(e)})}))
    return out

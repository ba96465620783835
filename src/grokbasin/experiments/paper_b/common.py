"""What every paper-B experiment shares: compute through the engine, neutral facts for titles."""

from __future__ import annotations

from typing import Any

from grokbasin.experiments.experiment import Context, Grid
from grokbasin.experiments.paper_b.engine import BRunResult, collect, run_all
from grokbasin.experiments.paper_b.spec import BRun, expand_grid

Rows = list[dict[str, Any]]


def runs_of(grid: dict[str, Any], device: str = "cpu") -> list[BRun]:
    """The grid's runs on ``device``."""
    g = dict(grid)
    g["base"] = {**grid["base"], "device": device}
    return expand_grid(g)


def compute(grid: dict[str, Any], ctx: Context) -> tuple[Rows, BRunResult]:
    """Train and sample whatever the grid still lacks under ctx.root; one row per estimate.

    Paper-B grids carry no device of their own: ``ctx.device`` None means CPU.
    """
    cfgs = runs_of(grid, ctx.device or "cpu")
    done = run_all(cfgs, ctx.root, ctx.backend, ctx.workers, ctx.progress)
    return collect(cfgs, ctx.root), done


def facts(grid: Grid) -> dict[str, Any]:
    """Neutral facts every paper-B figure title states: the task's fields and the sampler line."""
    return {"task": dict(grid["base"]["task"]), "sampler": describe(grid["base"]["llc"])}


def describe(s: dict[str, Any]) -> str:
    """One line naming the sampler settings (every figure states them)."""
    batch = f"batch {s['batch_size']}" if s.get("batch_size") else "full batch"
    return (
        f"SGLD ε={s['step_size']:g}, γ={s['gamma']:g}, nβ={s['nbeta']:.4g}, {s['burnin']} burn-in"
        f" + {s['draws']} draws, {s['chains']} chains, {batch}"
    )

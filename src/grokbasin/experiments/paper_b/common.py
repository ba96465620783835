"""What every paper-B experiment shares: a small context, compute through the engine, outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokbasin.experiments.paper_b.engine import BRunResult, collect, run_all
from grokbasin.experiments.paper_b.spec import BRun, expand_grid


@dataclass(frozen=True)
class Ctx:
    """Where and how an experiment computes: run root, backend, workers, device, progress."""

    root: Path
    backend: str = "local"
    workers: int = 1
    device: str = "cpu"
    progress: bool = False


def runs_of(grid: dict[str, Any], device: str = "cpu") -> list[BRun]:
    """The grid's runs on ``device``."""
    g = dict(grid)
    g["base"] = {**grid["base"], "device": device}
    return expand_grid(g)


def compute(grid: dict[str, Any], ctx: Ctx) -> tuple[list[dict[str, Any]], BRunResult]:
    """Train and sample whatever the grid still lacks under ctx.root; one row per estimate."""
    cfgs = runs_of(grid, ctx.device)
    done = run_all(cfgs, ctx.root, ctx.backend, ctx.workers, ctx.progress)
    return collect(cfgs, ctx.root), done


def describe(s: dict[str, Any]) -> str:
    """One line naming the sampler settings (every figure states them)."""
    batch = f"batch {s['batch_size']}" if s.get("batch_size") else "full batch"
    return (
        f"SGLD ε={s['step_size']:g}, γ={s['gamma']:g}, nβ={s['nbeta']:.4g}, {s['burnin']} burn-in"
        f" + {s['draws']} draws, {s['chains']} chains, {batch}"
    )

"""App. B.2 ``sgld-sensitivity``: λ̂ over an ε × γ grid at one checkpoint, log-linear fits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.experiments import common
from grokbasin.experiments.experiment import Context, Experiment, Grid, Output
from grokbasin.experiments.output import out_dir
from grokbasin.report.figures import PALETTE, new_figure

METHOD = (
    "One trained run; every (γ, ε) cell sampled from its solution checkpoint in one batched call "
    "with common random numbers (llc.calibrate, Laplace off; cells cached in the experiment "
    "folder). Hollow points carry a health flag (explosion, negative, nonstationary, R-hat); the "
    "per-ε fits ln λ̂ = a + b·ln γ use every positive estimate."
)

GRIDS: dict[str, Grid] = {
    "small": {
        "base": {
            "task": {"p": 23, "frac": 0.6},
            "model": {"width": 192},
            "train": common.train_small(3000, 100),
        },
        "seeds": [0],
        "sampler": common.sampler_small(chains=3),
        "gammas": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0],
        "steps": [3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
        "device": "cpu",
        "trim": "",
    },
    "paper": {
        "base": {
            "task": {"p": 53, "frac": 0.4},
            "model": {"width": 1024},
            "train": common.TRAIN_PAPER,
        },
        "seeds": [0],
        "sampler": {**common.SAMPLER_PAPER, "checkpoints": "last"},
        "gammas": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0],
        "steps": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
        "device": "auto",
        "trim": "nothing (one run, 30 cells × 3 chains × 600 steps ≈ 1 min of sampling here)",
    },
}


def sensitivity_cells(
    run: Path,
    epoch: int,
    llc: dict[str, Any],
    steps: list[float],
    gammas: list[float],
    cache: Path,
    device: str = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """λ̂ per (ε, γ) cell at one checkpoint: one batched sampler call, cached under ``cache``.

    Every cell shares the chain keys (common random numbers, :func:`llc.calibrate.calibrate`), so
    differences between cells come from the settings; a second call reads the cached table.
    """
    from grokbasin.config import LLCConfig, short_hash
    from grokbasin.llc.calibrate import calibrate
    from grokbasin.store.rundir import read_parquet, write_parquet

    lc = LLCConfig(**llc)
    tag = short_hash([Path(run).name, epoch, lc.sampler_hash(), steps, gammas], 10)
    path = Path(cache) / f"cells_{tag}.parquet"
    if path.exists():
        return read_parquet(path).to_pylist()
    cal = calibrate(
        run, epoch, lc, steps, gammas, device=device, laplace="off", write=False, progress=progress
    )
    rows = [
        {
            "step_size": r["step_size"],
            "gamma": r["gamma"],
            "nbeta": r["nbeta"],
            "llc": r["llc_mean"],
            "llc_std": r["llc_std"],
            "healthy": r["healthy"],
            "flags": ",".join(r["flags"]),
        }
        for r in cal.rows
    ]
    write_parquet(path, rows)
    return rows


def compute(grid: Grid, ctx: Context) -> Output:
    """Train the run, then sample the ε × γ grid at its solution checkpoint; per-ε γ fits."""
    llc = grid["sampler"]
    gammas, steps = [float(g) for g in grid["gammas"]], [float(e) for e in grid["steps"]]
    (cfg,) = common.grid_configs(grid, ctx, llc)
    common.run(ctx, [cfg], False)
    epoch, ok = common.solution_epoch(common.metrics_rows(cfg, ctx.root))
    rows = sensitivity_cells(
        ctx.root / cfg.run_hash(),
        epoch,
        llc,
        steps,
        gammas,
        out_dir(ctx.root, "sgld-sensitivity", ctx.scale),
        common.device_for(grid, ctx),
        ctx.progress,
    )
    summary = []
    for eps in steps:
        sel = [r for r in rows if r["step_size"] == eps]
        b, a0, r2 = common.log_linear_fit(
            np.log([r["gamma"] for r in sel]), [r["llc"] for r in sel]
        )
        summary.append(
            {
                "step_size": eps,
                "slope_ln_llc_vs_ln_gamma": b,
                "intercept": a0,
                "r2": r2,
                "healthy_cells": sum(r["healthy"] for r in sel),
                "cells": len(sel),
            }
        )
    facts = {
        "steps": steps,
        "gammas": gammas,
        "p": cfg.task.p,
        "width": cfg.model.width,
        "epoch": epoch,
        "generalised": ok,
        "burnin": llc["burnin"],
        "draws": llc["draws"],
    }
    return Output({"sgld-sensitivity": rows}, summary, facts)


def _health_points(ax: Any, sel: list[dict[str, Any]], xkey: str, col: str) -> None:
    """Healthy cells filled, flagged cells hollow (non-positive λ̂ cannot be drawn on log axes)."""
    good = [r for r in sel if r["healthy"] and r["llc"] > 0]
    bad = [r for r in sel if not r["healthy"] and r["llc"] > 0]
    ax.scatter([r[xkey] for r in good], [r["llc"] for r in good], color=col, s=22, zorder=3)
    ax.scatter(
        [r[xkey] for r in bad],
        [r["llc"] for r in bad],
        facecolors="none",
        edgecolors=col,
        s=22,
        zorder=3,
    )


def plot(out: Output) -> dict[str, Any]:
    """λ̂ vs γ per ε (with the per-ε fit in the legend) and λ̂ vs ε per γ, log-log."""
    rows, f = out.tables["sgld-sensitivity"], out.facts
    fit = {s["step_size"]: s for s in out.summary}
    fig, axes = new_figure(1, 2, width=11.0, row_height=4.0)
    ax, ax2 = axes[0, 0], axes[0, 1]
    for i, eps in enumerate(f["steps"]):
        sel = [r for r in rows if r["step_size"] == eps]
        col = PALETTE[i % len(PALETTE)]
        b, r2 = fit[eps]["slope_ln_llc_vs_ln_gamma"], fit[eps]["r2"]
        ax.plot(
            [r["gamma"] for r in sel],
            [r["llc"] for r in sel],
            "-",
            color=col,
            linewidth=0.8,
            label=f"ε={eps:g}: slope {b:.2f} (R² {r2:.2f})"
            if math.isfinite(b)
            else f"ε={eps:g}: no finite λ̂",
        )
        _health_points(ax, sel, "gamma", col)
    for i, gam in enumerate(f["gammas"]):
        sel = [r for r in rows if r["gamma"] == gam]
        col = PALETTE[i % len(PALETTE)]
        ax2.plot(
            [r["step_size"] for r in sel],
            [r["llc"] for r in sel],
            "-",
            color=col,
            linewidth=0.8,
            label=f"γ={gam:g}",
        )
        _health_points(ax2, sel, "step_size", col)
    for a in (ax, ax2):
        a.scatter(
            [],
            [],
            facecolors="none",
            edgecolors="#777777",
            s=25,
            label="health flag (nonstationary, R-hat, ...)",
        )
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_ylabel("LLC estimate λ̂ (SGLD)")
        a.legend(
            fontsize=7, loc="upper right" if a is ax else "lower right", ncol=1 if a is ax else 2
        )
    ax.set_xlabel("γ (localisation)")
    ax2.set_xlabel("ε (SGLD step size)")
    ax.set_title(
        f"λ̂ vs γ, fit ln λ̂ = a + b·ln γ (p={f['p']}, K={f['width']}, epoch {f['epoch']})",
        fontsize=9,
    )
    ax2.set_title(
        f"λ̂ vs ε (nβ={rows[0]['nbeta']:.4g}, {f['burnin']}+{f['draws']} steps)", fontsize=9
    )
    return {"sgld-sensitivity": fig}


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "sgld-sensitivity",
        "App. B.2: LLC vs γ and ε at a fixed checkpoint, log-linear fit",
        GRIDS,
        compute,
        plot,
        METHOD,
        keys=frozenset({"sampler", "gammas", "steps"}),
    ),
)

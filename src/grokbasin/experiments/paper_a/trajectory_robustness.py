"""Fig. 3 / H.2 ``trajectory-robustness``: LLC trajectories across p, K, lr, batch, wd, seeds."""

from __future__ import annotations

from typing import Any

import numpy as np

from grokbasin.experiments import common
from grokbasin.experiments.experiment import Context, Experiment, Grid, Output
from grokbasin.report.figures import PALETTE, new_figure, unit_label

METHOD = (
    "One panel per variant of the base run. Green: LLC mean over seeds at every checkpoint with "
    "min-max band over seeds (each seed's value is its chain mean); orange (right axis): "
    "validation accuracy per seed. One figure per sampler."
)

GRIDS: dict[str, Grid] = {
    # K = 192, frac 0.5 groks by ~2000 epochs at lr 1e-3 (K = 128 did not within 2500), leaving
    # room for the post-grokking fall (no early stop)
    "small": {
        "base": {
            "task": {"p": 23, "frac": 0.5},
            "model": {"width": 192},
            "train": {
                "epochs": 3000,
                "checkpoint_every": 100,
                "batch_size": 128,
                "lr": [1e-3],
                "weight_decay": [1e-4],
            },
        },
        "variants": {
            "base": {},
            "p=29": {"task.p": 29},
            "K=256": {"model.width": 256},
            "lr=2e-3": {"train.lr": [2e-3]},
            "batch=64": {"train.batch_size": 64},
            "wd=1e-3": {"train.weight_decay": [1e-3]},
        },
        "seeds": [0, 1],
        "samplers": {"small": common.sampler_small(checkpoints="all", chains=2)},
        "device": "cpu",
        "trim": "",
    },
    "paper": {
        "base": {
            "task": {"p": 53, "frac": 0.4},
            "model": {"width": 1024},
            "train": common.TRAIN_PAPER,
        },
        "variants": {
            "base": {},
            "p=61": {"task.p": 61},
            "K=1400": {"model.width": 1400},
            "lr=3e-4": {"train.lr": [3e-4]},
            "batch=256": {"train.batch_size": 256},
            "wd=1e-4": {"train.weight_decay": [1e-4]},
        },
        "seeds": [0],
        "samplers": {
            "paper": {**common.SAMPLER_PAPER, "checkpoints": "all"},
            "calibrated": {**common.SAMPLER_PAPER_CALIBRATED, "checkpoints": "all"},
        },
        "llc_thin": {"dense_until": 3000, "every": 500},
        "device": "auto",
        "trim": "seeds 1 of 3 (the six variants carry the robustness claim); LLC at every "
        "100-step checkpoint up to step 3000 (memorisation and the rise), then every 500 steps "
        "and the last (the paper: every 100). Training in the authors' step units.",
    },
}


def compute(grid: Grid, ctx: Context) -> Output:
    """Train and sample every (variant, seed) with every sampler; per-epoch mean/min/max."""
    rows: list[dict[str, Any]] = []
    val_acc: dict[str, list[tuple[list[int], list[float]]]] = {}
    labels = list(common.samplers(grid))
    for label, llc in common.samplers(grid).items():
        by_variant = {
            name: common.grid_configs(grid, ctx, llc, points=[pt])
            for name, pt in grid["variants"].items()
        }
        every = grid.get("llc_thin")
        if every:  # train first: the thinned checkpoint list depends on where each run stopped
            common.run(ctx, [c for cs in by_variant.values() for c in cs], False)
            by_variant = {
                n: common.at_thinned(cs, ctx.root, every["dense_until"], every["every"])
                for n, cs in by_variant.items()
            }
        common.run(ctx, [c for cs in by_variant.values() for c in cs], True)
        for name, cs in by_variant.items():
            per = common.llc_by_epochs(cs, ctx.root)
            epochs = sorted(set.intersection(*(set(p) for p in per))) if per else []
            for e in epochs:
                v = np.array([float(np.mean(p[e])) for p in per])
                rows.append(
                    {
                        "sampler": label,
                        "variant": name,
                        "epoch": e,
                        "llc_mean": float(v.mean()),
                        "llc_min": float(v.min()),
                        "llc_max": float(v.max()),
                    }
                )
            if name not in val_acc:
                val_acc[name] = []
                for c in cs:
                    a = sorted(common.metrics_rows(c, ctx.root), key=lambda r: r["epoch"])
                    val_acc[name].append(([r["epoch"] for r in a], [r["val_acc"] for r in a]))
    unit = common.grid_configs(grid, ctx)[0].train.unit
    facts = {
        "variants": list(grid["variants"]),
        "samplers": labels,
        "val_acc": val_acc,
        "x_label": unit_label(unit),
    }
    return Output({"trajectory-robustness": rows}, [], facts)


def plot(out: Output) -> dict[str, Any]:
    """Per sampler: a 2 × 3 grid of variants, LLC band (left axis) and val accuracy (right)."""
    figs = {}
    for i, label in enumerate(out.facts["samplers"]):
        fig, axes = new_figure(2, 3, width=10.0, row_height=2.8)
        for ax, name in zip(axes.flat, out.facts["variants"], strict=False):
            sel = [
                r
                for r in out.tables["trajectory-robustness"]
                if r["sampler"] == label and r["variant"] == name
            ]
            if sel:
                ep = [r["epoch"] for r in sel]
                ax.plot(
                    ep, [r["llc_mean"] for r in sel], color=PALETTE[2], label="LLC mean over seeds"
                )
                ax.fill_between(
                    ep,
                    [r["llc_min"] for r in sel],
                    [r["llc_max"] for r in sel],
                    color=PALETTE[2],
                    alpha=0.25,
                )
            ax2 = ax.twinx()
            for epochs, acc in out.facts["val_acc"].get(name, []):
                ax2.plot(epochs, acc, color=PALETTE[1], alpha=0.5, linewidth=0.8)
            ax2.set_ylim(0, 1.05)
            ax2.set_ylabel("val acc", color=PALETTE[1], fontsize=8)
            ax.set_title(name)
            ax.set_xlabel(out.facts.get("x_label", "epoch"))
        for a in axes[:, 0]:
            a.set_ylabel(f"LLC (SGLD, {label})")
        figs["trajectory-robustness" if i == 0 else f"trajectory-robustness-{label}"] = fig
    return figs


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "trajectory-robustness",
        "Fig. 3/H.2: LLC trajectories across p, K, lr, batch, weight decay, seeds (mean ± band)",
        GRIDS,
        compute,
        plot,
        METHOD,
        keys=frozenset({"variants", "llc_thin"}),
    ),
)

"""Fig. 4 ``gsm-vs-lr`` and H.3 ``gsm-vs-weight-decay``: GSM and max LLC vs a hyperparameter."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from grokbasin.analysis.grokking import gsm
from grokbasin.experiments import common
from grokbasin.experiments.experiment import Context, Experiment, Grid, Output
from grokbasin.report.figures import PALETTE, new_figure

METHOD = (
    "GSM is computed up to each run's solution checkpoint (lowest-loss checkpoint with train acc "
    "≥ 0.99 and val acc ≥ 0.95), as if training had stopped there: small Adam runs can fall off "
    "the solution later, which would zero GSM's indicator. GSM averages the train-validation gap "
    "over T epochs, so it scales as 1/T: column 'gsm' takes T = the solution checkpoint, "
    "'gsm_budget' takes T = the grid's epoch budget (train.epochs) with the gap held at its "
    "solution value after it, one T for every run. GSM is 0 for runs that never reach val acc "
    "0.95; means use only seeds that generalised (column 'generalised'), and the log fits "
    "(ln GSM = a + b·log10 x) only positive means. The max LLC is over every estimated checkpoint."
)


def gsm_grid(
    name: str,
    key: str,
    values: list[float],
    base: dict[str, Any],
    seeds: list[int],
    llc: dict[str, Any],
    device: str = "cpu",
    trim: str = "",
) -> Grid:
    """GSM sweep over ``key`` ∈ ``values`` × seeds, LLC at every checkpoint."""
    return {
        "name": name,
        "key": key,
        "base": base,
        "grid": {key: values},
        "seeds": seeds,
        "samplers": {"main": llc},
        "device": device,
        "trim": trim,
    }


_SMALL_BASE = {
    "task": {"p": 23, "frac": 0.5},
    "model": {"width": 192},
    "train": common.train_small(3000, 200),
}
_SMALL_LLC = common.sampler_small(checkpoints="all", chains=2)
_PAPER_BASE = {
    "task": {"p": 53, "frac": 0.4},
    "model": {"width": 1024},
    "train": common.TRAIN_PAPER,
}
_PAPER_LLC = {**common.SAMPLER_PAPER, "checkpoints": "all"}

GSM_VS_LR: dict[str, Grid] = {
    "small": gsm_grid(
        "gsm-vs-lr", "train.lr", [5e-4, 1e-3, 2e-3, 4e-3], _SMALL_BASE, [0, 1], _SMALL_LLC
    ),
    "paper": gsm_grid(
        "gsm-vs-lr",
        "train.lr",
        [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
        _PAPER_BASE,
        [0, 1, 2],
        _PAPER_LLC,
        "auto",
        "lr 1e-5 and 3e-5 dropped: the values differ only in lr, so they train as one replica "
        "batch that stops when its slowest member does, and grokking time grows ~1/lr (~6k "
        "epochs at 3e-5, ~19k at 1e-5), which would put every run at ~70+ checkpoints to train "
        "and sample (~54 min with 3e-5). Epochs capped at 10k. Estimated here: 15 runs × ~20 "
        "checkpoints × (1.9 s training + 1.8 s sampling) ≈ 18 min; if one lr never "
        "generalises the batch trains to the cap (~90 min): then run that lr on its own.",
    ),
}

# at small scale wd 1e-2 never memorises and wd ≤ 1e-5 does not grok within 3000 epochs;
# lr 1e-3 (not gsm-vs-lr's 5e-4) so that every seed groks from wd 1e-4 up
GSM_VS_WD: dict[str, Grid] = {
    "small": gsm_grid(
        "gsm-vs-weight-decay",
        "train.weight_decay",
        [1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 3e-3],
        {**_SMALL_BASE, "train": {**_SMALL_BASE["train"], "lr": [1e-3]}},
        [0, 1],
        _SMALL_LLC,
    ),
    "paper": gsm_grid(
        "gsm-vs-weight-decay",
        "train.weight_decay",
        [1e-6, 1e-5, 1e-4, 1e-3],
        _PAPER_BASE,
        [0, 1],
        _PAPER_LLC,
        "auto",
        "wd 1e-2 dropped (at small scale the largest wd never memorised, and one run that never "
        "generalises keeps the whole replica batch training to the epoch cap); seeds 2 of 3; "
        "epochs capped at 10k. Estimated here: 8 runs × 20-40 checkpoints × 3.7 s ≈ 10-20 min.",
    ),
}


def compute(grid: Grid, ctx: Context) -> Output:
    """Train and sample every run; GSM per run, then per value over seeds that generalised."""
    name, key = grid["name"], grid["key"]
    values = grid["grid"][key]
    llc = next(iter(common.samplers(grid).values()))
    cfgs = common.grid_configs(grid, ctx, llc)
    common.run(ctx, cfgs, True)
    rows = []
    for c, by in zip(cfgs, common.llc_by_epochs(cfgs, ctx.root), strict=True):
        mrows = common.metrics_rows(c, ctx.root)
        end, ok, g = common.solution_metrics(mrows)
        upto = [r for r in mrows if r["epoch"] <= end]
        curves = [[r[k] for r in upto] for k in ("epoch", "train_acc", "val_acc")]
        means = [float(np.mean(v)) for v in by.values()]
        rows.append(
            {
                "value": c.train.lr[0] if key == "train.lr" else c.train.weight_decay[0],
                "seed": c.train.seeds[0],
                "generalised": ok,
                "gsm": g.get("gsm"),
                "gsm_budget": gsm(*curves, horizon=c.train.epochs) if ok else 0.0,
                "regime": g.get("regime"),
                "t_mem": g.get("t_mem"),
                "t_gen": g.get("t_gen"),
                "max_llc": max(means) if means else math.nan,
            }
        )
    agg = []
    for v in values:
        sel = [r for r in rows if r["value"] == v]
        gen = [r for r in sel if r["generalised"]]
        agg.append(
            {"value": v}
            | _mean_std(gen, "gsm")
            | _mean_std(gen, "gsm_budget")
            | {
                "max_llc_mean": float(np.nanmean([r["max_llc"] for r in sel])),
                "generalised": len(gen),
                "n": len(sel),
            }
        )
    lx = [math.log10(a["value"]) for a in agg]
    fits = []
    for col, t in (("gsm", "solution checkpoint"), ("gsm_budget", "epoch budget")):
        b, a0, r2 = common.log_linear_fit(lx, [a[f"{col}_mean"] for a in agg])
        fits.append({"fit": f"ln {col} = a + b·log10(x), T = {t}", "b": b, "a": a0, "r2": r2})
    return Output({name: rows}, [*fits, *agg], {"name": name, "key": key})


def _mean_std(rows: list[dict[str, Any]], col: str) -> dict[str, float]:
    """Mean and standard deviation of ``col`` over rows (nan for none)."""
    v = [r[col] for r in rows]
    return {
        f"{col}_mean": float(np.mean(v)) if v else math.nan,
        f"{col}_std": float(np.std(v)) if v else math.nan,
    }


def plot(out: Output) -> dict[str, Any]:
    """GSM vs the hyperparameter (T = solution checkpoint and T = epoch budget) with their
    exponential-decay fits, and max LLC vs it."""
    name, key = out.facts["name"], out.facts["key"]
    fits, agg = out.summary[:2], out.summary[2:]
    x = [a["value"] for a in agg]
    short = "lr" if key == "train.lr" else "wd"
    label = "learning rate" if key == "train.lr" else "weight decay"
    fig, axes = new_figure(1, 2, width=9.0, row_height=3.6)
    ax = axes[0, 0]
    series = (("gsm", "T = solution checkpoint"), ("gsm_budget", "T = epoch budget"))
    for (col, what), fit, color in zip(series, fits, PALETTE, strict=False):
        y = [a[f"{col}_mean"] for a in agg]
        ax.errorbar(x, y, yerr=[a[f"{col}_std"] for a in agg], fmt="o", color=color, capsize=2)
        b, a0, r2 = fit["b"], fit["a"], fit["r2"]
        lx = [math.log10(v) for v, m in zip(x, y, strict=True) if m > 0]  # the fitted points
        if math.isfinite(b) and lx:
            xs = np.logspace(min(lx), max(lx), 50)
            ax.plot(
                xs,
                np.exp(a0 + b * np.log10(xs)),
                color=color,
                label=f"{what}: GSM ∝ exp({b:.2f}·log10 {short}), R²={r2:.2f}",
            )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(label)
    ax.set_ylabel("GSM (mean over seeds that generalised)")
    ax.set_title(f"GSM vs {label}")
    ax2 = axes[0, 1]
    ax2.plot(x, [a["max_llc_mean"] for a in agg], "o-", color=PALETTE[2])
    ax2.set_xscale("log")
    ax2.set_xlabel(label)
    ax2.set_ylabel("max LLC along training")
    ax2.set_title(f"max LLC vs {label}")
    return {name: fig}


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "gsm-vs-lr",
        "Fig. 4: GSM vs learning rate (exponential-decay fit) and max LLC vs lr",
        GSM_VS_LR,
        compute,
        plot,
        METHOD,
        keys=frozenset({"name", "key"}),
    ),
    Experiment(
        "gsm-vs-weight-decay",
        "H.3: GSM vs weight decay (exponential-decay fit), max LLC",
        GSM_VS_WD,
        compute,
        plot,
        METHOD,
        keys=frozenset({"name", "key"}),
    ),
)

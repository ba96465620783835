"""Figs. 4, 11, 12 ``gsm-vs-lr`` (GSM and max LLC vs lr, at several weight decays) and, ours,
``gsm-vs-weight-decay``: GSM and max LLC vs a hyperparameter."""

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
    series: tuple[str, list[float]] | None = None,
    llc_thin: dict[str, int] | None = None,
) -> Grid:
    """GSM sweep over ``key`` ∈ ``values`` × seeds (× a second hyperparameter ``series``, one
    curve per value: Fig. 11's GSM vs lr at several weight decays), LLC at every checkpoint or,
    with ``llc_thin``, at a thinned set chosen after training (see common.thinned_epochs)."""
    grid: Grid = {
        "name": name,
        "key": key,
        "base": base,
        "grid": {key: values} | ({series[0]: series[1]} if series else {}),
        "seeds": seeds,
        "samplers": {"main": llc},
        "device": device,
        "trim": trim,
    }
    if series:
        grid["series"] = series[0]
    if llc_thin:
        grid["llc_thin"] = llc_thin
    return grid


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
        [0],
        _PAPER_LLC,
        "auto",
        "lr 1e-5 and 3e-5 dropped (grokking takes ~1/lr steps: ~80k and ~26k here, each run "
        "as long to train as the other five together); one seed of 3; weight decays 1e-5 (the "
        "baseline, Fig. 4) and 1e-4 for Fig. 11; LLC (for Fig. 12's max LLC) at every "
        "checkpoint up to step 2000, then every 1000 steps and the last (the authors: every "
        "100 steps). Training in the authors' step units to their early stop.",
        series=("train.weight_decay", [1e-5, 1e-4]),
        llc_thin={"dense_until": 2000, "every": 1000},
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
        "generalises keeps the whole replica batch training to the 100k-step cap); seeds 2 of "
        "3; LLC at every checkpoint up to step 2000, then every 1000 steps and the last. "
        "Training in the authors' step units to their early stop.",
        llc_thin={"dense_until": 2000, "every": 1000},
    ),
}


def compute(grid: Grid, ctx: Context) -> Output:
    """Train and sample every run; GSM per run, then per value over seeds that generalised."""
    name, key, skey = grid["name"], grid["key"], grid.get("series")
    values = grid["grid"][key]
    llc = next(iter(common.samplers(grid).values()))
    cfgs = common.grid_configs(grid, ctx, llc)
    thin = grid.get("llc_thin")
    if thin:  # the thinned checkpoint list depends on where each run stopped
        common.run(ctx, cfgs, False)
        cfgs = common.at_thinned(cfgs, ctx.root, thin["dense_until"], thin["every"])
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
                "value": _hyper(c, key),
                "series": _hyper(c, skey) if skey else None,
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
    fits, agg = [], []
    for sv in grid["grid"][skey] if skey else [None]:
        here = []
        for v in values:
            sel = [r for r in rows if r["value"] == v and r["series"] == sv]
            gen = [r for r in sel if r["generalised"]]
            here.append(
                {"series": sv, "value": v}
                | _mean_std(gen, "gsm")
                | _mean_std(gen, "gsm_budget")
                | {
                    "max_llc_mean": float(np.nanmean([r["max_llc"] for r in sel])),
                    "generalised": len(gen),
                    "n": len(sel),
                }
            )
        lx = [math.log10(a["value"]) for a in here]
        for col, t in (("gsm", "solution checkpoint"), ("gsm_budget", "epoch budget")):
            b, a0, r2 = common.log_linear_fit(lx, [a[f"{col}_mean"] for a in here])
            fit = f"ln {col} = a + b·log10(x), T = {t}"
            fits.append({"series": sv, "fit": fit, "b": b, "a": a0, "r2": r2})
        agg += here
    facts = {"name": name, "key": key, "series": skey, "n_fits": len(fits)}
    return Output({name: rows}, [*fits, *agg], facts)


def _hyper(c: Any, key: str) -> float:
    """The value of a per-replica hyperparameter (train.lr or train.weight_decay) of a run."""
    return c.train.lr[0] if key == "train.lr" else c.train.weight_decay[0]


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
    name, key, skey = out.facts["name"], out.facts["key"], out.facts.get("series")
    n_fits = out.facts.get("n_fits", 2)
    fits, agg = out.summary[:n_fits], out.summary[n_fits:]
    short = "lr" if key == "train.lr" else "wd"
    label = "learning rate" if key == "train.lr" else "weight decay"
    fig, axes = new_figure(1, 2, width=9.0, row_height=3.6)
    ax, ax2 = axes[0, 0], axes[0, 1]
    series = (("gsm", "T = solution checkpoint", "o", "-"), ("gsm_budget", "T = budget", "s", ":"))
    for k, sv in enumerate(dict.fromkeys(a["series"] for a in agg)):
        here = [a for a in agg if a["series"] == sv]
        x = [a["value"] for a in here]
        tag = f"wd {sv:g}, " if sv is not None else ""
        color = PALETTE[k % len(PALETTE)] if skey else None
        for j, (col, what, marker, ls) in enumerate(series):
            c = color or PALETTE[j]
            y = [a[f"{col}_mean"] for a in here]
            yerr = [a[f"{col}_std"] for a in here]
            ax.errorbar(x, y, yerr=yerr, fmt=marker, color=c, capsize=2, ms=4)
            fit = next(f for f in fits if f["series"] == sv and f["fit"].startswith(f"ln {col} "))
            b, a0, r2 = fit["b"], fit["a"], fit["r2"]
            lx = [math.log10(v) for v, m in zip(x, y, strict=True) if m > 0]  # the fitted points
            if math.isfinite(b) and lx:
                xs = np.logspace(min(lx), max(lx), 50)
                ax.plot(
                    xs,
                    np.exp(a0 + b * np.log10(xs)),
                    color=c,
                    linestyle=ls,
                    label=f"{tag}{what}: GSM ∝ exp({b:.2f}·log10 {short}), R²={r2:.2f}",
                )
        ax2.plot(
            x,
            [a["max_llc_mean"] for a in here],
            "o-",
            color=color or PALETTE[2],
            label=tag.rstrip(", ") or None,
        )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    if skey:
        ax2.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(label)
    ax.set_ylabel("GSM (mean over seeds that generalised)")
    ax.set_title(f"GSM vs {label}")
    ax2.set_xscale("log")
    ax2.set_xlabel(label)
    ax2.set_ylabel("max LLC along training")
    ax2.set_title(f"max LLC vs {label}")
    return {name: fig}


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "gsm-vs-lr",
        "Figs. 4, 11, 12: GSM vs learning rate at each weight decay (exponential fits), "
        "max LLC vs lr",
        GSM_VS_LR,
        compute,
        plot,
        METHOD,
        keys=frozenset({"name", "key", "series", "llc_thin"}),
    ),
    Experiment(
        "gsm-vs-weight-decay",
        "ours: GSM vs weight decay (exponential fit), max LLC; paper A's H.3 is gsm-vs-lr "
        "at several weight decays",
        GSM_VS_WD,
        compute,
        plot,
        METHOD,
        keys=frozenset({"name", "key", "series", "llc_thin"}),
    ),
)

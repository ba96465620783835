"""Paper A's figures as named experiments (SPEC §2 item 9, §3.9): one function per figure.

Each ``--scale small`` grid is chosen to finish within minutes on a 2-core CPU and still show the
qualitative result; ``--scale paper`` uses the paper's grids (for a GPU or a Ray cluster). LLCs
are SGLD estimates at the stated sampler settings (absolute values depend on them, App. B.2);
theory lines are the closed forms of SPEC §3.4, which count generic-input coordinates and can sit
far above what one-hot data lets SGLD see.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.experiments import common as C
from grokbasin.experiments.registry import ExperimentResult, register
from grokbasin.report.figures import PALETTE, new_figure, plot_linear_fit


def _llc_small(**kw: Any) -> dict[str, Any]:
    """Sampler settings used at small scale: calibrated with `grokbasin llc calibrate` on p = 23,
    K = 192 (and the lead's p = 23, K = 256): healthy, stationary chains, λ̂ ≈ 1.6× λ_Lap."""
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


_LLC_PAPER = {
    "chains": 3,
    "burnin": 100,
    "draws": 500,
    "step_size": 5e-4,
    "gamma": 5.0,
    "nbeta": 26.4,
    "batch_size": 128,
    "checkpoints": "last",
}


def _train_small(epochs: int, every: int, **kw: Any) -> dict[str, Any]:
    """Adam lr 5e-4, wd 1e-4, batch 128, stopping 2 checkpoints after val acc ≥ 0.98."""
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


_TRAIN_PAPER = {
    "epochs": 20000,
    "checkpoint_every": 100,
    "batch_size": 128,
    "lr": [1e-4],
    "weight_decay": [1e-5],
    "early_stop": True,
}


def _llc_scaling(
    name: str,
    xkey: str,
    series_key: str,
    xs: list[int],
    series: list[int],
    scale: str,
    root: Path,
    backend: str,
    workers: int,
    device: str,
    progress: bool,
    train: dict[str, Any],
    llc: dict[str, Any],
    frac: float,
    seeds: list[int] | None = None,
) -> ExperimentResult:
    """LLC of each run's learned solution vs one of p/width for several values of the other.

    Trains first, then samples each run at its :func:`common.solution_epoch` (lowest-loss
    checkpoint that generalises); runs that never generalise are drawn hollow and left out of the
    fits. Theory: the closed-form slope (3K/2 vs p, (3p−1)/2 vs K) and the data-aware bound
    p(N−1)/2 on rank(J)/2 (SPEC §3.4).
    """
    base = {"task": {"frac": frac}, "train": train}
    grid = {xkey: xs, series_key: series}
    cfgs = C.configs(base, grid, seeds=seeds or [0], llc=llc, device=device)
    C.execute(cfgs, root, False, backend, workers, progress)
    cfgs = C.at_solution(cfgs, root)
    C.execute(cfgs, root, True, backend, workers, progress)
    rows = []
    for c in cfgs:
        mrows = C.metrics_rows(c, root)
        e, ok = C.solution_epoch(mrows)
        m, s = C.final_llc(c, root, e)
        fm = next(r for r in mrows if r["epoch"] == e)
        p, k, n = c.task.p, c.model.width, c.task.n_train
        rows.append(
            {
                "p": p,
                "width": k,
                "seed": c.train.seeds[0],
                "epoch": e,
                "generalised": ok,
                "llc": m,
                "llc_std": s,
                "train_acc": fm["train_acc"],
                "val_acc": fm["val_acc"],
                "theory_under": k * (3 * p - 1) / 2,
                "theory_data": min(k * (3 * p - 1) / 2, p * (n - 1) / 2),
            }
        )
    fig, ax = new_figure(width=6.4, row_height=4.0)
    ax = ax[0, 0]
    summary = []
    xname = "p" if xkey == "task.p" else "width"
    sname = "width" if xname == "p" else "p"
    for i, sv in enumerate(series):
        col = PALETTE[i % len(PALETTE)]
        sel = [r for r in rows if r[sname] == sv and r["generalised"]]
        bad = [r for r in rows if r[sname] == sv and not r["generalised"]]
        theory = 1.5 * sv if xname == "p" else (3 * sv - 1) / 2
        slope, icpt, r2 = plot_linear_fit(
            ax,
            [r[xname] for r in sel],
            [r["llc"] for r in sel],
            yerr=[r["llc_std"] for r in sel],
            color=col,
            label=f"{sname}={sv} (theory slope {theory:g})",
        )
        if bad:
            ax.scatter(
                [r[xname] for r in bad],
                [r["llc"] for r in bad],
                facecolors="none",
                edgecolors=col,
                s=30,
                zorder=3,
            )
        summary.append(
            {
                sname: sv,
                "slope": slope,
                "intercept": icpt,
                "r2": r2,
                "n_fit": len(sel),
                "theory_slope": theory,
                "ratio_theory_over_fit": theory / slope
                if slope and math.isfinite(slope)
                else math.nan,
            }
        )
    ax.scatter(
        [],
        [],
        facecolors="none",
        edgecolors="#777777",
        s=30,
        label="never generalised (not fitted)",
    )
    ax.set_xlabel("p (modulus)" if xname == "p" else "K (hidden width)")
    ax.set_ylabel("LLC at the learned solution (SGLD)")
    lc = cfgs[0].llc
    ax.set_title(
        f"{name}: ε={lc.step_size:g}, γ={lc.gamma:g}, "
        f"nβ={lc.resolve_nbeta(cfgs[0].task.n_train):.4g}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    notes = [
        "Theory slopes (closed form, generic inputs): "
        + ", ".join(
            f"{sname}={s[sname]}: "
            f"{s['theory_slope']:.1f} vs fitted {s['slope']:.3g} (R² {s['r2']:.3f}, "
            f"{s['n_fit']} points)"
            for s in summary
        ),
        "Paper A's own estimator sits 20-30x below theory and validates only linearity "
        "(SPEC §3.4); compare R² and the ordering of slopes, not absolute values. Each run is "
        "sampled at its lowest-loss checkpoint with train acc ≥ 0.99 and val acc ≥ 0.95; hollow "
        "points never generalised and are not fitted.",
    ]
    return C.finish(
        name,
        scale,
        root,
        {f"{name}": fig},
        {f"{name}": rows},
        summary,
        notes,
        f"SGLD LLC at {llc}; training {train}, frac {frac}.",
    )


@register("llc-vs-p", "Fig. 1: final LLC vs modulus p for several widths, linear fits + theory")
def llc_vs_p(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    if scale == "paper":
        return _llc_scaling(
            "llc-vs-p",
            "task.p",
            "model.width",
            [53, 59, 61, 67, 71, 73, 79, 83, 89, 97],
            [600, 1000, 1400],
            scale,
            root,
            backend,
            workers,
            device,
            progress,
            _TRAIN_PAPER,
            _LLC_PAPER,
            0.4,
        )
    return _llc_scaling(
        "llc-vs-p",
        "task.p",
        "model.width",
        [19, 23, 29, 31],
        [96, 192, 256],
        scale,
        root,
        backend,
        workers,
        device,
        progress,
        _train_small(3000, 100),
        _llc_small(),
        0.6,
        [0, 1],
    )


@register("llc-vs-width", "Fig. 2: final LLC vs width K for several p, linear fits + theory")
def llc_vs_width(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    if scale == "paper":
        return _llc_scaling(
            "llc-vs-width",
            "model.width",
            "task.p",
            list(range(200, 1601, 200)),
            [53, 61, 71],
            scale,
            root,
            backend,
            workers,
            device,
            progress,
            _TRAIN_PAPER,
            _LLC_PAPER,
            0.4,
        )
    return _llc_scaling(
        "llc-vs-width",
        "model.width",
        "task.p",
        [96, 128, 192, 256],
        [23, 29, 31],
        scale,
        root,
        backend,
        workers,
        device,
        progress,
        _train_small(3000, 100),
        _llc_small(),
        0.6,
        [0, 1],
    )


def gsm_settings(scale: str) -> tuple[dict[str, Any], list[int], dict[str, Any]]:
    """(base config, seeds, LLC settings) of the GSM sweeps at a scale."""
    if scale == "paper":
        base = {"task": {"p": 53}, "model": {"width": 1024}, "train": _TRAIN_PAPER}
        return base, [0, 1, 2], {**_LLC_PAPER, "checkpoints": "all"}
    base = {
        "task": {"p": 23, "frac": 0.5},
        "model": {"width": 192},
        "train": _train_small(3000, 200),
    }
    return base, [0, 1], _llc_small(checkpoints="all", chains=2)


def _gsm_sweep(
    name: str,
    key: str,
    values: list[float],
    scale: str,
    root: Path,
    backend: str,
    workers: int,
    device: str,
    progress: bool,
    settings: tuple[dict[str, Any], list[int], dict[str, Any]] | None = None,
) -> ExperimentResult:
    """GSM (and max LLC along training) vs a hyperparameter; exponential-decay fit."""
    base, seeds, llc = settings or gsm_settings(scale)
    cfgs = C.configs(base, {key: values}, seeds=seeds, llc=llc, device=device)
    C.execute(cfgs, root, True, backend, workers, progress)
    rows = []
    for c in cfgs:
        mrows = C.metrics_rows(c, root)
        end, ok, g = C.solution_metrics(mrows)
        by = C.llc_by_epoch(c, root)
        means = [float(np.mean(v)) for v in by.values()]
        rows.append(
            {
                "value": c.train.lr[0] if key == "train.lr" else c.train.weight_decay[0],
                "seed": c.train.seeds[0],
                "gsm": g.get("gsm"),
                "regime": g.get("regime"),
                "t_mem": g.get("t_mem"),
                "t_gen": g.get("t_gen"),
                "max_llc": max(means) if means else math.nan,
            }
        )
    agg = []
    for v in values:
        sel = [r for r in rows if r["value"] == v]
        pos = [r["gsm"] for r in sel if r["gsm"]]  # seeds that generalised (GSM > 0)
        agg.append(
            {
                "value": v,
                "gsm_mean": float(np.mean(pos)) if pos else math.nan,
                "gsm_std": float(np.std(pos)) if pos else math.nan,
                "max_llc_mean": float(np.nanmean([r["max_llc"] for r in sel])),
                "generalised": len(pos),
                "n": len(sel),
            }
        )
    lx = [math.log10(a["value"]) for a in agg]
    b, a0, r2 = C.log_linear_fit(lx, [a["gsm_mean"] for a in agg])
    label = "learning rate" if key == "train.lr" else "weight decay"
    fig, axes = new_figure(1, 2, width=9.0, row_height=3.6)
    ax = axes[0, 0]
    ax.errorbar(
        [a["value"] for a in agg],
        [a["gsm_mean"] for a in agg],
        yerr=[a["gsm_std"] for a in agg],
        fmt="o",
        color=PALETTE[0],
        capsize=2,
    )
    if math.isfinite(b):
        xs = np.logspace(min(lx), max(lx), 50)
        ax.plot(
            xs,
            np.exp(a0 + b * np.log10(xs)),
            color="#333333",
            label=f"GSM ∝ exp({b:.2f}·log10 {'lr' if key == 'train.lr' else 'wd'}), R²={r2:.2f}",
        )
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("GSM (mean over seeds that generalised)")
    ax.set_title(f"GSM vs {label}")
    ax2 = axes[0, 1]
    ax2.plot([a["value"] for a in agg], [a["max_llc_mean"] for a in agg], "o-", color=PALETTE[2])
    ax2.set_xscale("log")
    ax2.set_xlabel(label)
    ax2.set_ylabel("max LLC along training")
    ax2.set_title(f"max LLC vs {label}")
    summary = [{"fit": "ln GSM = a + b·log10(x)", "b": b, "a": a0, "r2": r2}] + agg
    notes = [
        "GSM is computed up to each run's solution checkpoint (lowest-loss checkpoint with "
        "train acc ≥ 0.99 and val acc ≥ 0.95), as if training had stopped there: small Adam "
        "runs can fall off the solution later, which would zero GSM's indicator.",
        f"GSM is 0 for runs that never reach val acc 0.95; the plotted mean and the log "
        f"fit use only seeds that generalised (column 'generalised'). "
        f"Fit slope b = {b:.3g} (R² {r2:.3f}); "
        + (
            "paper A reports a ~exponential decay with learning rate (0.128 at 1e-4 → 0.007 "
            "at 1e-2 in a reproduction)."
            if key == "train.lr"
            else "paper A (App. H.3) reports GSM decaying with weight decay as with learning rate."
        ),
    ]
    return C.finish(
        name,
        scale,
        root,
        {name: fig},
        {name: rows},
        summary,
        notes,
        f"{len(cfgs)} runs ({len(values)} values × {len(seeds)} seeds), "
        f"batched per group; LLC at {llc}.",
    )


@register("gsm-vs-lr", "Fig. 4: GSM vs learning rate (exponential-decay fit) and max LLC vs lr")
def gsm_vs_lr(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    values = (
        [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2] if scale == "paper" else [5e-4, 1e-3, 2e-3, 4e-3]
    )
    return _gsm_sweep(
        "gsm-vs-lr", "train.lr", values, scale, root, backend, workers, device, progress
    )


@register("gsm-vs-weight-decay", "H.3: GSM vs weight decay (exponential-decay fit), max LLC")
def gsm_vs_weight_decay(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    settings = gsm_settings(scale)
    if scale == "paper":
        values = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
    else:
        # at small scale wd 1e-2 never memorises and wd ≤ 1e-5 does not grok within 3000 epochs;
        # lr 1e-3 (not gsm-vs-lr's 5e-4) so that every seed groks from wd 1e-4 up
        values = [1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 3e-3]
        base, seeds, llc = settings
        settings = ({**base, "train": {**base["train"], "lr": [1e-3]}}, seeds, llc)
    return _gsm_sweep(
        "gsm-vs-weight-decay",
        "train.weight_decay",
        values,
        scale,
        root,
        backend,
        workers,
        device,
        progress,
        settings,
    )


def _batch_for(batch: int, p: int, frac: float) -> int:
    """The sweep's batch size, or full batch (0) where the training set is smaller than it."""
    from grokbasin.config import build_config

    n = build_config({}, {"task.p": p, "task.frac": frac, "train.batch_size": 0}).task.n_train
    return 0 if batch == 0 or n <= batch else batch


@register("critical-data-size", "Fig. 14: val accuracy vs N/(p ln p), regimes and boundary")
def critical_data_size(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    if scale == "paper":
        ps, fracs = [53, 67, 79, 83, 101, 103], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
        base = {"model": {"width": 1024}, "train": _TRAIN_PAPER}
    else:
        # K = 128 ≥ 2p memorises every p here; lr 1e-3 groks p = 23 at frac 0.4 by ~2300 epochs
        ps, fracs = [17, 23, 29], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
        base = {"model": {"width": 128}, "train": _train_small(4000, 100, lr=[1e-3])}
    points = [
        {
            "task.p": p,
            "task.frac": f,
            "train.batch_size": _batch_for(base["train"]["batch_size"], p, f),
        }
        for p in ps
        for f in fracs
    ]
    cfgs = C.configs(base, points=points, seeds=[0], device=device)
    C.execute(cfgs, root, False, backend, workers, progress)
    rows = []
    for c in cfgs:
        mrows = C.metrics_rows(c, root)
        e, _, g = C.solution_metrics(mrows)
        fm = next(r for r in mrows if r["epoch"] == e)
        p, n = c.task.p, c.task.n_train
        rows.append(
            {
                "p": p,
                "frac": c.task.frac,
                "n_train": n,
                "scaled": n / (p * math.log(p)),
                "epoch": e,
                "val_acc": fm["val_acc"],
                "train_acc": fm["train_acc"],
                "max_val_acc": max(r["val_acc"] for r in mrows),
                "t_mem": g.get("t_mem"),
                "t_gen": g.get("t_gen"),
                "regime": g.get("regime"),
            }
        )
    colors = {
        "no generalisation": "#C00000",
        "grokking": "#E69F00",
        "immediate generalisation": "#009E73",
    }
    fig, ax = new_figure(width=6.4, row_height=4.0)
    ax = ax[0, 0]
    for i, p in enumerate(ps):
        sel = sorted((r for r in rows if r["p"] == p), key=lambda r: r["scaled"])
        ax.plot(
            [r["scaled"] for r in sel],
            [r["val_acc"] for r in sel],
            "-",
            color=PALETTE[i % len(PALETTE)],
            label=f"p={p}",
            linewidth=1,
        )
        ax.scatter(
            [r["scaled"] for r in sel],
            [r["val_acc"] for r in sel],
            s=30,
            zorder=3,
            c=[colors.get(str(r["regime"]), "#777777") for r in sel],
        )
    failed = [r["scaled"] for r in rows if r["val_acc"] < 0.95]
    ok = [r["scaled"] for r in rows if r["val_acc"] >= 0.95]
    boundary = math.nan
    if failed and ok:
        lo = max((x for x in failed if x < min(ok, default=math.inf)), default=max(failed))
        boundary = (lo + min(x for x in ok if x > lo)) / 2 if any(x > lo for x in ok) else lo
        ax.axvline(boundary, color="#333333", linestyle="--", label=f"boundary ≈ {boundary:.2f}")
    for name, col in colors.items():
        ax.scatter([], [], c=col, s=30, label=name)
    ax.set_xlabel("N / (p ln p)")
    ax.set_ylabel("validation accuracy at the solution checkpoint")
    ax.set_title(
        f"critical data size (K={cfgs[0].model.width}, ≤{cfgs[0].train.epochs} epochs)", fontsize=9
    )
    ax.legend(fontsize=7)
    summary = [{"boundary_scaled_size": boundary, "paper_reading": "2.5-3"}]
    notes = [
        "Boundary: midpoint between the largest scaled size that failed (val acc < 0.95) "
        "below every success and the next success. Paper A (after Tian) reads it near "
        "2.5-3. Each run is read at its solution checkpoint (lowest-loss checkpoint with "
        "train acc ≥ 0.99 and val acc ≥ 0.95; else the last); training stops 2 checkpoints "
        "after val acc ≥ 0.98, so 'no generalisation' means not within the epoch budget."
    ]
    return C.finish(
        "critical-data-size",
        scale,
        root,
        {"critical-data-size": fig},
        {"critical-data-size": rows},
        summary,
        notes,
        f"{len(cfgs)} runs: p ∈ {ps}, frac ∈ {fracs}, final val accuracy.",
    )


@register(
    "trajectory-robustness",
    "Fig. 3/H.2: LLC trajectories across p, K, lr, batch, weight decay, seeds (mean ± band)",
)
def trajectory_robustness(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    if scale == "paper":
        base = {"task": {"p": 53}, "model": {"width": 1024}, "train": _TRAIN_PAPER}
        seeds, llc = [0, 1, 2], {**_LLC_PAPER, "checkpoints": "all"}
        variants = {
            "base": {},
            "p=61": {"task.p": 61},
            "K=1400": {"model.width": 1400},
            "lr=3e-4": {"train.lr": [3e-4]},
            "batch=256": {"train.batch_size": 256},
            "wd=1e-4": {"train.weight_decay": [1e-4]},
        }
    else:
        # K = 192, frac 0.5 groks by ~2000 epochs at lr 1e-3 (K = 128 did not within 2500),
        # leaving room for the post-grokking fall
        base = {
            "task": {"p": 23, "frac": 0.5},
            "model": {"width": 192},
            "train": {
                "epochs": 3000,
                "checkpoint_every": 100,
                "batch_size": 128,
                "lr": [1e-3],
                "weight_decay": [1e-4],
            },
        }
        seeds, llc = [0, 1], _llc_small(checkpoints="all", chains=2)
        variants = {
            "base": {},
            "p=29": {"task.p": 29},
            "K=256": {"model.width": 256},
            "lr=2e-3": {"train.lr": [2e-3]},
            "batch=64": {"train.batch_size": 64},
            "wd=1e-3": {"train.weight_decay": [1e-3]},
        }
    by_variant = {
        name: C.configs(base, points=[pt], seeds=seeds, llc=llc, device=device)
        for name, pt in variants.items()
    }
    C.execute([c for cs in by_variant.values() for c in cs], root, True, backend, workers, progress)
    fig, axes = new_figure(2, 3, width=10.0, row_height=2.8)
    rows = []
    for ax, (name, cs) in zip(axes.flat, by_variant.items(), strict=False):
        per = [C.llc_by_epoch(c, root) for c in cs]
        epochs = sorted(set.intersection(*(set(p) for p in per))) if per else []
        vals = np.array([[float(np.mean(p[e])) for p in per] for e in epochs])
        if vals.size:
            ax.plot(epochs, vals.mean(1), color=PALETTE[2], label="LLC mean over seeds")
            ax.fill_between(epochs, vals.min(1), vals.max(1), color=PALETTE[2], alpha=0.25)
        acc = [C.metrics_rows(c, root) for c in cs]
        ax2 = ax.twinx()
        for a in acc:
            a = sorted(a, key=lambda r: r["epoch"])
            ax2.plot(
                [r["epoch"] for r in a],
                [r["val_acc"] for r in a],
                color=PALETTE[1],
                alpha=0.5,
                linewidth=0.8,
            )
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("val acc", color=PALETTE[1], fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        for e, v in zip(epochs, vals, strict=True):
            rows.append(
                {
                    "variant": name,
                    "epoch": e,
                    "llc_mean": float(v.mean()),
                    "llc_min": float(v.min()),
                    "llc_max": float(v.max()),
                }
            )
    for a in axes[:, 0]:
        a.set_ylabel("LLC (SGLD)")
    notes = [
        "Green: LLC mean over seeds with min-max band; orange (right axis): validation "
        "accuracy per seed. Paper A: the LLC rises during memorisation, peaks, and falls "
        "as the network generalises, across all variations."
    ]
    return C.finish(
        "trajectory-robustness",
        scale,
        root,
        {"trajectory-robustness": fig},
        {"trajectory-robustness": rows},
        [],
        notes,
        f"Variants {list(variants)} × seeds {seeds}; LLC at {llc}.",
    )


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


@register("sgld-sensitivity", "App. B.2: LLC vs γ and ε at a fixed checkpoint, log-linear fit")
def sgld_sensitivity(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    from grokbasin.experiments.registry import out_dir

    if scale == "paper":
        base = {"task": {"p": 53}, "model": {"width": 1024}, "train": _TRAIN_PAPER}
        gammas, steps, llc = [1, 3, 10, 30, 100, 300], [1e-5, 3e-5, 1e-4, 3e-4, 1e-3], _LLC_PAPER
    else:
        base = {
            "task": {"p": 23, "frac": 0.6},
            "model": {"width": 192},
            "train": _train_small(3000, 100),
        }
        gammas = [1, 3, 10, 30, 100, 300]
        steps = [3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
        llc = _llc_small(chains=3)
    gammas, steps = [float(g) for g in gammas], [float(e) for e in steps]
    cfg = C.configs(base, seeds=[0], llc=llc, device=device)
    C.execute(cfg, root, False, backend, workers, progress)
    epoch, ok = C.solution_epoch(C.metrics_rows(cfg[0], root))
    rows = sensitivity_cells(
        root / cfg[0].run_hash(),
        epoch,
        llc,
        steps,
        gammas,
        out_dir(root, "sgld-sensitivity", scale),
        device,
        progress,
    )
    fig, axes = new_figure(1, 2, width=11.0, row_height=4.0)
    ax, ax2 = axes[0, 0], axes[0, 1]
    summary = []
    for i, eps in enumerate(steps):
        sel = [r for r in rows if r["step_size"] == eps]
        col = PALETTE[i % len(PALETTE)]
        b, a0, r2 = C.log_linear_fit(np.log([r["gamma"] for r in sel]), [r["llc"] for r in sel])
        ax.plot(
            [r["gamma"] for r in sel],
            [r["llc"] for r in sel],
            "-",
            color=col,
            linewidth=0.8,
            label=f"ε={eps:g}: slope {b:.2f} (R² {r2:.2f})"
            if math.isfinite(b)
            else f"ε={eps:g}: diverged (no finite λ̂)",
        )
        _health_points(ax, sel, "gamma", col)
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
    for i, gam in enumerate(gammas):
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
        f"λ̂ vs γ, fit ln λ̂ = a + b·ln γ (p={cfg[0].task.p}, K={cfg[0].model.width}, epoch {epoch})",
        fontsize=9,
    )
    ax2.set_title(
        f"λ̂ vs ε (nβ={rows[0]['nbeta']:.4g}, {llc['burnin']}+{llc['draws']} steps)", fontsize=9
    )
    notes = [
        f"One trained run, every (γ, ε) cell sampled from its solution checkpoint (epoch "
        f"{epoch}, {'generalised' if ok else 'did not generalise'}) in one batched call with "
        "common random numbers. Hollow points carry a health flag (explosion, negative, "
        "nonstationary, R-hat); the per-ε fits use every positive estimate.",
        "Paper A App. B.2: estimates move by orders of magnitude with ε and γ, log-linearly "
        "in γ; absolute values are comparable only at fixed sampler settings.",
    ]
    return C.finish(
        "sgld-sensitivity",
        scale,
        root,
        {"sgld-sensitivity": fig},
        {"sgld-sensitivity": rows},
        summary,
        notes,
        f"γ ∈ {gammas}, ε ∈ {steps}; other settings {llc}.",
    )

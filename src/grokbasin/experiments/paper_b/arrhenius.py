"""Arrhenius-style tests of paper B: ΔF vs log(time to transition) on grokking and TMS runs.

Same pattern as paper A (see ``experiments.paper_a``): ``compute`` trains and samples through the
run engine (all seeds as replicas of one batch) and turns the per-checkpoint rows into transition
pairs with ΔF and their fit; ``plot`` draws it; what the numbers mean is in ``docs/paper-b.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grokbasin.analysis import free_energy as FE
from grokbasin.experiments.experiment import Context, Experiment, Grid, Output
from grokbasin.experiments.paper_b.common import Rows, compute, facts
from grokbasin.experiments.paper_b.grids import GRIDS
from grokbasin.report.figures import PALETTE, new_figure, plot_linear_fit
from grokbasin.theory import paper_b as TH

MIN_CHECKPOINTS = 20  # SPEC §3.8: grokking runs enter the fit only if j − i > 20 checkpoints


def _by_run(rows: Rows) -> dict[str, Rows]:
    out: dict[str, Rows] = {}
    for r in rows:
        out.setdefault(r["run"], []).append(r)
    return {k: sorted(v, key=lambda q: q["epoch"]) for k, v in out.items()}


def grokking_pairs(rows: Rows, n: int, every: int) -> Rows:
    """Per grokked run: i, j, r = j − i, λ̂ and loss at both, ΔF, and whether it enters the fit."""
    out = []
    for run, rs in _by_run(rows).items():
        if len(rs) != 2:
            continue
        a, b = rs
        out.append(
            {
                "run": run,
                "seed": a["seed"],
                "t_train_acc_1": a["epoch"],
                "t_val_acc_095": b["epoch"],
                "r": b["epoch"] - a["epoch"],
                "llc_i": a["llc"],
                "llc_j": b["llc"],
                "loss_i": a["train_loss"],
                "loss_j": b["train_loss"],
                "delta_F": float(
                    FE.delta_free_energy(a["llc"], b["llc"], a["train_loss"], b["train_loss"], n)
                ),
                "in_fit": (b["epoch"] - a["epoch"]) / every > MIN_CHECKPOINTS,
            }
        )
    return out


def tms_pairs(rows: Rows, n: int, window: int = 3) -> tuple[Rows, dict[str, list]]:
    """Consecutive loss-curve transitions per TMS run with ΔF.

    The curve is the full training loss at the checkpoints (100 in the paper), smoothed over
    ``window`` of them: at this resolution a window of 5 merged the later drops into the first.
    """
    out, found = [], {}
    for run, rs in _by_run(rows).items():
        steps = np.array([q["epoch"] for q in rs])
        curve = np.array([q["train_loss"] for q in rs], float)
        tr = FE.detect_transitions(curve, window=window)
        found[run] = (steps, curve, tr)
        at = {q["epoch"]: q for q in rs}
        for a, b in FE.transition_pairs(steps, tr):
            if b <= a:
                continue
            qa, qb = at[a], at[b]
            out.append(
                {
                    "run": run,
                    "seed": qa["seed"],
                    "step_a": a,
                    "step_b": b,
                    "r": b - a,
                    "llc_a": qa["llc"],
                    "llc_b": qb["llc"],
                    "loss_a": qa["train_loss"],
                    "loss_b": qb["train_loss"],
                    "delta_F": float(
                        FE.delta_free_energy(
                            qa["llc"], qb["llc"], qa["train_loss"], qb["train_loss"], n
                        )
                    ),
                    "in_fit": True,
                }
            )
    return out, found


def _fit_points(pairs: Rows) -> tuple[np.ndarray, np.ndarray]:
    """(ΔF, r) of the pairs that enter the fit and have a finite ΔF."""
    use = [p for p in pairs if p["in_fit"] and np.isfinite(p["delta_F"])]
    return np.array([p["delta_F"] for p in use]), np.array([p["r"] for p in use], float)


def fit_summary(pairs: Rows, base: dict[str, Any]) -> Rows:
    """``base`` plus slope, R² and 95% bootstrap slope interval of ΔF on log r (if ≥ 3 points)."""
    df, r = _fit_points(pairs)
    if len(df) < 3 or np.ptp(np.log(r)) <= 0:
        return [base]
    fitres = FE.arrhenius_fit(df, r)
    return [
        base
        | {
            "slope": fitres.slope,
            "intercept": fitres.intercept,
            "r2": fitres.r2,
            "slope_lo": fitres.slope_ci[0],
            "slope_hi": fitres.slope_ci[1],
            "n_fit": fitres.n,
        }
    ]


def plot_fit(pairs: Rows, summary: dict[str, Any], title: str) -> Any:
    """Scatter ΔF vs log r with the least-squares line, R² and bootstrap slope interval."""
    df, r = _fit_points(pairs)
    fig, ax = new_figure(width=6.0, row_height=3.8)
    a = ax[0, 0]
    if "slope" in summary:
        plot_linear_fit(
            a,
            np.log(r),
            df,
            color=PALETTE[0],
            label=f"runs (n={len(df)}), 95% CI [{summary['slope_lo']:.3g}, "
            f"{summary['slope_hi']:.3g}]",
        )
    else:
        a.plot(np.log(r), df, "o", color=PALETTE[0], label=f"runs (n={len(df)}): too few to fit")
    a.set(xlabel="log r (time to transition)", ylabel="ΔF", title=title)
    a.title.set_fontsize(7)
    a.legend(fontsize=7)
    return fig


GROKKING = "arrhenius_grokking"


def compute_grokking(grid: Grid, ctx: Context) -> Output:
    """Grokking pairs (i, j) per run with ΔF; summary: counts and the fit of ΔF on log r."""
    rows, _ = compute(grid, ctx)
    t = grid["base"]["task"]
    n, every = int(t["frac"] * t["p"] ** 2), grid["base"]["train"]["checkpoint_every"]
    pairs = grokking_pairs(rows, n, every)
    base = {
        "runs": len(grid["seeds"]),
        "grokked": len(pairs),
        "in_fit": sum(p["in_fit"] for p in pairs),
    }
    return Output({GROKKING: pairs}, fit_summary(pairs, base), facts(grid))


def plot_grokking(out: Output) -> dict[str, Any]:
    """ΔF vs log r over the grokked runs."""
    s, f = out.summary[0], out.facts
    title = (
        f"paper B MLP, p={f['task']['p']}: {s['grokked']}/{s['runs']} grokked, {s['in_fit']} with "
        f"j − i > {MIN_CHECKPOINTS} checkpoints\n{f['sampler']}"
    )
    return {GROKKING: plot_fit(out.tables[GROKKING], s, title)}


TMS = "arrhenius_tms"
CURVES_SHOWN = 6


def compute_tms(grid: Grid, ctx: Context) -> Output:
    """Consecutive transition pairs per TMS run with ΔF, the fit, and the first runs' curves."""
    rows, _ = compute(grid, ctx)
    pairs, found = tms_pairs(rows, grid["base"]["task"]["n"])
    summary = fit_summary(pairs, {"runs": len(grid["seeds"]), "pairs": len(pairs)})
    curves = [
        {"step": steps, "loss": curve, "at": [t.at for t in tr]}
        for steps, curve, tr in list(found.values())[:CURVES_SHOWN]
    ]
    return Output({TMS: pairs}, summary, facts(grid) | {"curves": curves})


def plot_tms(out: Output) -> dict[str, Any]:
    """ΔF vs log r over the transition pairs, and the loss curves with detected transitions."""
    s, f = out.summary[0], out.facts
    title = f"TMS 8→2, {s['runs']} runs, {s['pairs']} transition pairs\n{f['sampler']}"
    fig = plot_fit(out.tables[TMS], s, title)
    fig2, ax = new_figure(width=6.4, row_height=3.6)
    for i, c in enumerate(f["curves"]):
        col = PALETTE[i % len(PALETTE)]
        ax[0, 0].plot(c["step"], c["loss"], color=col, lw=1)
        for at in c["at"]:
            ax[0, 0].axvline(c["step"][at], color=col, ls=":", lw=0.8)
    for k in range(2, 9):
        ax[0, 0].axhline(TH.tms_kgon_loss(8, k), color="#999999", lw=0.6, ls="--")
    ax[0, 0].set(
        xlabel="SGD step",
        ylabel="train loss",
        title="TMS loss curves of 6 runs (dotted: detected transitions;\n"
        "dashed: k-gon losses (n−k)(n−1)/n², k = 2..8)",
    )
    ax[0, 0].title.set_fontsize(7)
    return {TMS: fig, "tms_curves": fig2}


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "arrhenius-grokking",
        "Paper B: ΔF vs log time-to-grok over many seeds of the MLP",
        GRIDS["arrhenius-grokking"],
        compute_grokking,
        plot_grokking,
        "i = first checkpoint with train acc 1, j = first with val acc ≥ 0.95, r = j − i (steps);"
        " ΔF = (λ̂_j − λ̂_i)·log N + N·(L_j − L_i). Paper B: 168 of 500 runs grokked (33.6%); "
        "slope negative with low R².",
    ),
    Experiment(
        "arrhenius-tms",
        "Paper B: ΔF vs log time between loss-curve transitions in TMS runs",
        GRIDS["arrhenius-tms"],
        compute_tms,
        plot_tms,
        "Transitions: fast drops of the smoothed loss (at checkpoints) ≥ 10% of its total "
        "decrease; r = steps between consecutive transitions, ΔF between the checkpoints after"
        " them. Paper B: TMS inconclusive (slightly positive slope).",
    ),
)

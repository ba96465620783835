"""Arrhenius-style tests of paper B: ΔF vs log(time to transition) on grokking and TMS runs.

``compute`` trains and samples through the run engine (all seeds as replicas of one batch);
``analyse`` turns the per-checkpoint rows into transition pairs with ΔF; ``plot`` draws the fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.analysis import free_energy as FE
from grokbasin.experiments.common import finish
from grokbasin.experiments.paper_b.common import Ctx, compute, describe
from grokbasin.experiments.paper_b.grids import grid as grid_of
from grokbasin.experiments.registry import ExperimentResult, register
from grokbasin.report.figures import PALETTE, new_figure, plot_linear_fit
from grokbasin.theory import paper_b as TH

Rows = list[dict[str, Any]]
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


def plot_fit(pairs: Rows, title: str) -> tuple[Any, Any]:
    """Scatter ΔF vs log r with the least-squares line, R² and bootstrap slope interval."""
    use = [p for p in pairs if p["in_fit"] and np.isfinite(p["delta_F"])]
    df = np.array([p["delta_F"] for p in use])
    r = np.array([p["r"] for p in use], float)
    fig, ax = new_figure(width=6.0, row_height=3.8)
    a = ax[0, 0]
    fitres = None
    if len(df) >= 3 and np.ptp(np.log(r)) > 0:
        fitres = FE.arrhenius_fit(df, r)
        plot_linear_fit(
            a,
            np.log(r),
            df,
            color=PALETTE[0],
            label=f"runs (n={len(df)}), 95% CI [{fitres.slope_ci[0]:.3g}, "
            f"{fitres.slope_ci[1]:.3g}]",
        )
    else:
        a.plot(np.log(r), df, "o", color=PALETTE[0], label=f"runs (n={len(df)}): too few to fit")
    a.set(xlabel="log r (time to transition)", ylabel="ΔF", title=title)
    a.title.set_fontsize(7)
    a.legend(fontsize=7)
    return fig, fitres


def fit_summary(fitres: Any, base: dict[str, Any], paper: str) -> tuple[Rows, list[str]]:
    if fitres is None:
        return [base], ["Too few transitions to fit ΔF against log r.", paper]
    sign = "negative" if fitres.slope < 0 else "positive"
    covers = fitres.slope_ci[0] < 0 < fitres.slope_ci[1]
    row = base | {
        "slope": fitres.slope,
        "r2": fitres.r2,
        "slope_lo": fitres.slope_ci[0],
        "slope_hi": fitres.slope_ci[1],
    }
    note = (
        f"ΔF ≈ {fitres.slope:.3g}·log r + {fitres.intercept:.3g}, R² = {fitres.r2:.3f}, 95% "
        f"bootstrap slope interval [{fitres.slope_ci[0]:.3g}, {fitres.slope_ci[1]:.3g}] over "
        f"{fitres.n} points: slope {sign}" + (", interval covers 0." if covers else ".")
    )
    return [row], [note, paper]


@register("arrhenius-grokking", "Paper B: ΔF vs log time-to-grok over many seeds of the MLP")
def arrhenius_grokking(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    g = grid_of("arrhenius-grokking", scale)
    rows, _ = compute(g, Ctx(root, backend, workers, device, progress))
    t, s = g["base"]["task"], g["base"]["llc"]
    n, every = int(t["frac"] * t["p"] ** 2), g["base"]["train"]["checkpoint_every"]
    pairs = grokking_pairs(rows, n, every)
    seeds = len(g["seeds"])
    kept = sum(p["in_fit"] for p in pairs)
    title = (
        f"paper B MLP, p={t['p']}: {len(pairs)}/{seeds} grokked, {kept} with j − i > "
        f"{MIN_CHECKPOINTS} checkpoints\n{describe(s)}"
    )
    fig, fitres = plot_fit(pairs, title)
    base = {"runs": seeds, "grokked": len(pairs), "in_fit": kept}
    summary, notes = fit_summary(
        fitres, base, "Paper B: 168 of 500 runs grokked (33.6%); slope negative with low R²."
    )
    if g.get("trim"):
        notes.append(f"Deviation from the paper's grid: {g['trim']}.")
    return finish(
        "arrhenius-grokking",
        scale,
        root,
        {"arrhenius_grokking": fig},
        {"arrhenius_grokking": pairs},
        summary,
        notes,
        "i = first checkpoint with train acc 1, j = first with val acc ≥ 0.95, r = j − i (steps);"
        " ΔF = (λ̂_j − λ̂_i)·log N + N·(L_j − L_i).",
    )


@register("arrhenius-tms", "Paper B: ΔF vs log time between loss-curve transitions in TMS runs")
def arrhenius_tms(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    g = grid_of("arrhenius-tms", scale)
    rows, _ = compute(g, Ctx(root, backend, workers, device, progress))
    n = g["base"]["task"]["n"]
    pairs, found = tms_pairs(rows, n)
    seeds = len(g["seeds"])
    title = f"TMS 8→2, {seeds} runs, {len(pairs)} transition pairs\n{describe(g['base']['llc'])}"
    fig, fitres = plot_fit(pairs, title)
    fig2, ax = new_figure(width=6.4, row_height=3.6)
    for i, (steps, curve, tr) in enumerate(list(found.values())[:6]):
        col = PALETTE[i % len(PALETTE)]
        ax[0, 0].plot(steps, curve, color=col, lw=1)
        for t in tr:
            ax[0, 0].axvline(steps[t.at], color=col, ls=":", lw=0.8)
    for k in range(2, 9):
        ax[0, 0].axhline(TH.tms_kgon_loss(8, k), color="#999999", lw=0.6, ls="--")
    ax[0, 0].set(
        xlabel="SGD step",
        ylabel="train loss",
        title="TMS loss curves of 6 runs (dotted: detected transitions;\n"
        "dashed: k-gon losses (n−k)(n−1)/n², k = 2..8)",
    )
    ax[0, 0].title.set_fontsize(7)
    summary, notes = fit_summary(
        fitres,
        {"runs": seeds, "pairs": len(pairs)},
        "Paper B: TMS inconclusive (slightly positive slope).",
    )
    if g.get("trim"):
        notes.append(f"Deviation from the paper's grid: {g['trim']}.")
    return finish(
        "arrhenius-tms",
        scale,
        root,
        {"arrhenius_tms": fig, "tms_curves": fig2},
        {"arrhenius_tms": pairs},
        summary,
        notes,
        "Transitions: fast drops of the smoothed loss (at checkpoints) ≥ 10% of its total "
        "decrease; r = steps between consecutive transitions, ΔF between the checkpoints after"
        " them.",
    )

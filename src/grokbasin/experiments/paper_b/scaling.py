"""LLC scaling families of paper B: polynomial regressors, low-rank linear nets, autoencoders.

Each experiment is ``compute(grid, ctx) -> rows`` (through the run engine) and
``plot(rows, grid) -> (figure, summary, notes)``; the registered function joins the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.experiments.common import finish
from grokbasin.experiments.paper_b.common import Ctx, compute, describe
from grokbasin.experiments.paper_b.grids import grid as grid_of
from grokbasin.experiments.registry import ExperimentResult, register
from grokbasin.report.figures import PALETTE, THEORY_COLORS, new_figure, plot_linear_fit
from grokbasin.theory import paper_b as TH

Rows = list[dict[str, Any]]

# ------------------------------------------------------------------ polynomial


def plot_polynomial(rows: Rows, grid: dict[str, Any]) -> tuple[Any, Rows, list[str]]:
    """λ̂ vs degree per domain width, with (d+1)/2 and the paper's d/2."""
    s = grid["base"]["llc"]
    degrees = sorted({r["size"] for r in rows})
    widths = sorted({r["c"] for r in rows}, reverse=True)
    fig, ax = new_figure(width=6.4, row_height=4.0)
    a = ax[0, 0]
    summary = []
    for i, c in enumerate(widths):
        m = [np.array([r["llc"] for r in rows if r["c"] == c and r["size"] == d]) for d in degrees]
        mean, sd = np.array([v.mean() for v in m]), np.array([v.std() for v in m])
        a.errorbar(
            degrees,
            mean,
            yerr=sd,
            fmt="o-",
            color=PALETTE[i],
            ms=3,
            capsize=2,
            label=f"SGLD λ̂, c = {c:g}",
        )
        th = np.array([TH.polynomial_llc(d) for d in degrees])
        summary.append(
            {
                "c": c,
                "llc_at_max_degree": float(mean[-1]),
                "spread_at_max_degree": float(sd[-1]),
                "theory_at_max_degree": float(th[-1]),
                "fraction_of_degrees_below_theory": float(np.mean(mean < th)),
            }
        )
    dd = np.array(degrees, float)
    a.plot(dd, (dd + 1) / 2, "--", color=THEORY_COLORS[0], label="theory (d+1)/2")
    a.plot(dd, dd / 2, ":", color=THEORY_COLORS[1], label="paper's line d/2")
    n = grid["base"]["task"]["n"]
    a.set(
        xscale="log",
        yscale="log",
        xlabel="degree d",
        ylabel="LLC",
        title=f"Polynomial regressors, N = {n}: {describe(s)}",
    )
    a.title.set_fontsize(7)
    a.legend()
    ordered = all(
        summary[i]["llc_at_max_degree"] >= summary[i + 1]["llc_at_max_degree"]
        for i in range(len(summary) - 1)
    )
    below = all(x["llc_at_max_degree"] < x["theory_at_max_degree"] for x in summary)
    notes = [
        f"Estimates at degree {degrees[-1]}: "
        + ", ".join(f"c={x['c']:g}: {x['llc_at_max_degree']:.3g}" for x in summary)
        + f" vs theory {TH.polynomial_llc(degrees[-1]):g}.",
        "Paper B: estimates fall below (d+1)/2 and drop for narrower domains. Ours: "
        + ("below theory at the largest degree" if below else "NOT below theory")
        + (
            ", ordered c=1 ≥ .75 ≥ .5 there." if ordered else "; the domain ordering does NOT hold."
        ),
    ]
    return fig, summary, notes


@register("llc-polynomial", "Paper B: LLC of polynomial regressors vs degree for c = 1, .75, .5")
def llc_polynomial(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    g = grid_of("llc-polynomial", scale)
    rows, _ = compute(g, Ctx(root, backend, workers, device, progress))
    fig, summary, notes = plot_polynomial(rows, g)
    return finish(
        "llc-polynomial",
        scale,
        root,
        {"llc_polynomial": fig},
        {"llc_polynomial": rows},
        summary,
        notes + _trim(g),
        "λ̂ at the exact least-squares fit (float64) vs degree.",
    )


# ------------------------------------------------------------------ low-rank linear networks


def plot_low_rank(rows: Rows, grid: dict[str, Any]) -> tuple[Any, Rows, list[str]]:
    """λ̂ vs rank with the quadratic fit, theory r(2d − r)/2 and the paper's fit at d = 100."""
    s, d = grid["base"]["llc"], grid["base"]["task"]["d"]
    ranks = sorted({r["size"] for r in rows})
    r = np.array(ranks, float)
    lam = np.array([np.mean([q["llc"] for q in rows if q["size"] == k]) for k in ranks])
    coef = np.linalg.lstsq(np.stack([r**2, r], 1), lam, rcond=None)[0]
    fig, ax = new_figure(width=6.4, row_height=4.0)
    a = ax[0, 0]
    a.plot(r, lam, "o", color=PALETTE[0], ms=3, label="SGLD λ̂")
    a.plot(
        r,
        coef[0] * r**2 + coef[1] * r,
        "-",
        color=PALETTE[0],
        label=f"fit {coef[0]:.3g} r² + {coef[1]:.3g} r",
    )
    a.plot(r, r * (2 * d - r) / 2, "--", color=THEORY_COLORS[0], label="theory r(2d − r)/2")
    if d == 100:
        a.plot(
            r,
            -0.429 * r**2 + 87.342 * r,
            ":",
            color=THEORY_COLORS[1],
            label="paper's fit −0.429 r² + 87.342 r",
        )
    n = grid["base"]["task"]["n"]
    a.set(xlabel="rank r", ylabel="LLC", title=f"W₂W₁, d = {d}, N = {n}: {describe(s)}")
    a.title.set_fontsize(7)
    a.legend()
    ratio = lam / (r * (2 * d - r) / 2)
    summary = [
        {
            "d": d,
            "fit_a": float(coef[0]),
            "fit_b": float(coef[1]),
            "theory_a": -0.5,
            "theory_b": float(d),
            "paper_a_d100": -0.429,
            "paper_b_d100": 87.342,
            "median_ratio_to_theory": float(np.median(ratio)),
        }
    ]
    notes = [
        f"Fit λ̂ ≈ {coef[0]:.3g} r² + {coef[1]:.3g} r; theory −0.5 r² + {d} r; median "
        f"λ̂/theory = {np.median(ratio):.3f} (range {ratio.min():.3f}–{ratio.max():.3f}).",
        "Paper B at d = 100: −0.429 r² + 87.342 r (~13% below theory in the linear term).",
    ]
    return fig, summary, notes


@register("llc-low-rank", "Paper B: LLC of low-rank linear networks W2W1 vs rank, with theory")
def llc_low_rank(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    g = grid_of("llc-low-rank", scale)
    rows, _ = compute(g, Ctx(root, backend, workers, device, progress))
    for q in rows:
        q["theory"] = TH.low_rank_llc(q["d"], q["size"])
    fig, summary, notes = plot_low_rank(rows, g)
    return finish(
        "llc-low-rank",
        scale,
        root,
        {"llc_low_rank": fig},
        {"llc_low_rank": rows},
        summary,
        notes + _trim(g),
        "λ̂ at an exact minimum (balanced SVD factors of the OLS fit).",
    )


# ------------------------------------------------------------------ autoencoders


def plot_autoencoder(rows: Rows, grid: dict[str, Any]) -> tuple[Any, Rows, list[str]]:
    """λ̂ vs bottleneck width with its linear fit and R²."""
    s = grid["base"]["llc"]
    bn = sorted({r["size"] for r in rows})
    lam = [np.mean([q["llc"] for q in rows if q["size"] == k]) for k in bn]
    sd = [np.mean([q["llc_std"] for q in rows if q["size"] == k]) for k in bn]
    fig, ax = new_figure(width=6.4, row_height=4.0)
    slope, icpt, r2 = plot_linear_fit(ax[0, 0], bn, lam, color=PALETTE[0], label="SGLD λ̂", yerr=sd)
    d, n = grid["base"]["task"]["d"], grid["base"]["task"]["n"]
    ax[0, 0].set(xlabel="bottleneck r", ylabel="LLC", title=f"d = {d}, N = {n}: {describe(s)}")
    ax[0, 0].title.set_fontsize(7)
    ax[0, 0].legend()
    summary = [{"d": d, "slope": slope, "intercept": icpt, "r2": r2}]
    notes = [
        f"λ̂ vs r: slope {slope:.3g}, intercept {icpt:.3g}, R² = {r2:.3f} (paper B: R² 0.998).",
        "Final train MSE per r: "
        + ", ".join(
            f"{q['size']}: {q['train_loss']:.3g}" for q in sorted(rows, key=lambda q: q["size"])
        ),
    ]
    return fig, summary, notes


@register("llc-autoencoder", "Paper B: LLC of low-rank ReLU autoencoders vs bottleneck width")
def llc_autoencoder(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    g = grid_of("llc-autoencoder", scale)
    rows, _ = compute(g, Ctx(root, backend, workers, device, progress))
    fig, summary, notes = plot_autoencoder(rows, g)
    return finish(
        "llc-autoencoder",
        scale,
        root,
        {"llc_autoencoder": fig},
        {"llc_autoencoder": rows},
        summary,
        notes + _trim(g),
        "λ̂ of trained ReLU autoencoders d → 128 → r → 128 → d on x = Az.",
    )


def _trim(g: dict[str, Any]) -> list[str]:
    return [f"Deviation from the paper's grid: {g['trim']}."] if g.get("trim") else []

"""Figures: the paper-Fig.-3 trajectory and small helpers for sweep figures, from plain arrays.

Figures are built on ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot state), so they
are safe to make in worker processes and never open a window. Every figure states which LLC
quantity it shows (SPEC §3.4 data-aware caveat): an SGLD estimate at given sampler settings, a
localised Laplace prediction, a numeric rank(J)/2, or a closed form over generic inputs.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from grokbasin.store.rundir import atomic_write  # noqa: E402

if TYPE_CHECKING:
    from grokbasin.config import LLCConfig

# ---------------------------------------------------------------------------------------------
# Style shared by every grokbasin figure.

COLORS: dict[str, str] = {
    "train": "#0072B2",  # blue
    "val": "#D55E00",  # vermilion
    "llc": "#009E73",  # green
    "laplace": "#CC79A7",  # purple-pink
    "t_mem": "#555555",
    "t_gen": "#E69F00",  # orange
    "flag": "#C00000",
    "fit": "#333333",
}
"""Named colours (Okabe–Ito, colour-blind safe) for the quantities that recur across figures."""

PALETTE: tuple[str, ...] = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
"""Cycle for series in sweep figures (one colour per p, width, learning rate ...)."""

THEORY_STYLES: tuple[Any, ...] = ("--", "-.", ":", (0, (5, 2, 1, 2)))
"""Line styles for successive theory reference lines."""

THEORY_COLORS: tuple[str, ...] = ("#000000", "#56B4E9", "#8C564B", "#7F7F7F")
"""Colours for successive theory reference lines (distinct from the data and t_mem/t_gen)."""

RESTRICT_COLORS: tuple[str, ...] = ("#0072B2", "#D55E00", "#CC79A7", "#E69F00", "#56B4E9")
"""Colours for weight-restricted λ̂ series (the unrestricted one keeps COLORS['llc'])."""

RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "legend.frameon": True,
    "legend.framealpha": 0.85,
    "savefig.dpi": 150,
}
"""matplotlib rc settings applied to every grokbasin figure."""

MARK_LABELS = {"t_mem": "$t_{mem}$ (train acc ≥ 0.99)", "t_gen": "$t_{gen}$ (val acc ≥ 0.95)"}
BandKind = Literal["minmax", "std"]


def style() -> Any:
    """Context manager applying the house rc style; wrap a whole figure's construction in it."""
    return matplotlib.rc_context(RC)


def legend_outside(ax: Axes, width: int = 44, **kw: Any) -> None:
    """Legend to the right of the axes (never over data), long labels wrapped to ``width``."""
    handles, labels = ax.get_legend_handles_labels()
    labels = [_wrap(lab, width) for lab in labels]
    ax.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw
    )


def _wrap(label: str, width: int) -> str:
    """Wrap plain-text labels; mathtext labels ($...$) are left whole."""
    return label if "$" in label else "\n".join(textwrap.wrap(label, width)) or label


def new_figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    width: float = 6.4,
    row_height: float = 2.6,
    sharex: bool = False,
) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure with the house style and a 2-D array of axes."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, row_height * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    for ax in axes.flat:
        _apply_style(ax)
    return fig, axes


def _apply_style(ax: Axes) -> None:
    """Apply the rc style to an axes made outside an rc_context."""
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(True, alpha=RC["grid.alpha"], linewidth=RC["grid.linewidth"])
    ax.tick_params(labelsize=RC["xtick.labelsize"])
    ax.xaxis.label.set_size(RC["axes.labelsize"])
    ax.yaxis.label.set_size(RC["axes.labelsize"])
    ax.title.set_size(RC["axes.titlesize"])


# ---------------------------------------------------------------------------------------------
# Pure maths used by the plots.


def band_stats(values: np.ndarray, kind: BandKind = "minmax") -> tuple[np.ndarray, ...]:
    """Mean and lower/upper band over the last axis (chains), ignoring non-finite entries."""
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[:, None]
    finite = np.isfinite(v)
    count = finite.sum(axis=-1)
    safe = np.where(finite, v, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, safe.sum(-1) / np.maximum(count, 1), np.nan)
        if kind == "minmax":
            lo = np.where(count > 0, np.where(finite, v, np.inf).min(-1), np.nan)
            hi = np.where(count > 0, np.where(finite, v, -np.inf).max(-1), np.nan)
        elif kind == "std":
            var = np.where(finite, (v - mean[..., None]) ** 2, 0.0).sum(-1) / np.maximum(count, 1)
            sd = np.sqrt(var)
            lo, hi = mean - sd, mean + sd
        else:
            raise ValueError(f"band kind must be 'minmax' or 'std', not {kind!r}")
    return mean, lo, hi


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R² of y on x (finite pairs only)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if xa.size < 2 or np.ptp(xa) == 0:
        return math.nan, math.nan, math.nan
    slope, intercept = np.polyfit(xa, ya, 1)
    resid = ya - (slope * xa + intercept)
    ss_tot = float(((ya - ya.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return float(slope), float(intercept), r2


def split_theory(
    theory: Sequence[Mapping[str, Any]], lo: float, hi: float, factor: float = 3.0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split theory values into those within ``factor``× of the range [lo, hi] and the rest."""
    on, off = [], []
    lo_ok, hi_ok = (lo / factor if lo > 0 else lo * factor), hi * factor
    for t in theory:
        v = float(t["value"])
        fits = math.isfinite(v) and math.isfinite(lo) and math.isfinite(hi) and lo_ok <= v <= hi_ok
        (on if fits else off).append(dict(t))
    return on, off


def merge_equal(theory: Sequence[Mapping[str, Any]], rel: float = 1e-9) -> list[dict[str, Any]]:
    """Join theory entries with equal values into one ('a, b = v'), keeping first-seen order."""
    out: list[dict[str, Any]] = []
    for t in theory:
        v = float(t["value"])
        same = next((o for o in out if math.isclose(o["value"], v, rel_tol=rel)), None)
        if same is None:
            out.append({"name": str(t["name"]), "value": v})
        else:
            same["name"] += f", {t['name']}"
    return out


def fmt_num(v: float) -> str:
    """Compact human format for annotation text (4 significant digits, no trailing zeros)."""
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-2):
        mant, exp = f"{v:.3e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


# ---------------------------------------------------------------------------------------------
# Reusable plotting helpers.


def plot_band(
    ax: Axes,
    x: Sequence[float],
    values: np.ndarray,
    *,
    color: str,
    label: str,
    kind: BandKind = "minmax",
    band_label: str | None = None,
    marker: str | None = "o",
    alpha: float = 0.22,
) -> None:
    """Mean line over the last axis of ``values`` [N, C] with a min–max or ±std band."""
    mean, lo, hi = band_stats(values, kind)
    x = np.asarray(x, dtype=float)
    ax.plot(x, mean, color=color, label=label, marker=marker, markersize=3)
    if np.asarray(values).ndim == 2 and np.asarray(values).shape[1] > 1:
        default = "min–max over chains" if kind == "minmax" else "±1 std over chains"
        ax.fill_between(
            x, lo, hi, color=color, alpha=alpha, linewidth=0, label=band_label or default
        )


def plot_linear_fit(
    ax: Axes,
    x: Sequence[float],
    y: Sequence[float],
    *,
    color: str,
    label: str,
    yerr: Sequence[float] | None = None,
    marker: str = "o",
) -> tuple[float, float, float]:
    """Scatter y vs x with its least-squares line; legend shows slope and R². Returns the fit."""
    slope, intercept, r2 = linear_fit(x, y)
    xa = np.asarray(x, dtype=float)
    ax.errorbar(
        xa,
        np.asarray(y, dtype=float),
        yerr=yerr,
        fmt=marker,
        color=color,
        markersize=4,
        capsize=2,
        linestyle="none",
    )
    if math.isfinite(slope):
        xs = np.linspace(np.nanmin(xa), np.nanmax(xa), 50)
        ax.plot(
            xs,
            slope * xs + intercept,
            color=color,
            linewidth=1.2,
            label=f"{label}: slope {fmt_num(slope)}, $R^2$ = {r2:.3f}",
        )
    else:
        ax.plot([], [], color=color, label=f"{label}: too few points to fit")
    return slope, intercept, r2


def mark_times(ax: Axes, marks: Mapping[str, float | None] | None, *, label: bool = True) -> None:
    """Vertical lines at t_mem / t_gen (and any other named epochs) on one axes."""
    for name, epoch in (marks or {}).items():
        if epoch is None or not math.isfinite(float(epoch)):
            continue
        color = COLORS.get(name, COLORS["t_mem"])
        style = ":" if name == "t_mem" else "--"
        ax.axvline(
            float(epoch),
            color=color,
            linestyle=style,
            linewidth=1.2,
            zorder=1,
            label=(f"{MARK_LABELS.get(name, name)} = {fmt_num(float(epoch))}" if label else None),
        )


def add_caption(fig: Figure, text: str) -> None:
    """A wrapped caption line under the axes saying what is plotted."""
    fig.get_layout_engine().set(h_pad=0.06)
    fig.supxlabel(text, fontsize=7.5, color="#333333", wrap=True, x=0.5, ha="center")


# ---------------------------------------------------------------------------------------------
# The paper-Fig.-3 trajectory.


def sampler_settings(llc: LLCConfig, n_train: int) -> dict[str, Any]:
    """The settings :func:`describe_sampler` states, for a sampler config and the data size."""
    return {
        "nbeta": llc.resolve_nbeta(n_train),
        "step_size": llc.step_size,
        "gamma": llc.gamma,
        "chains": llc.chains,
        "draws": llc.draws,
        "burnin": llc.burnin,
        "baseline": llc.baseline,
        **({"data": llc.data} if llc.data != "train" else {}),  # a data-refined LLC says so
    }


def describe_sampler(settings: Mapping[str, Any] | None) -> str:
    """One-line description of SGLD settings, e.g. 'nβ=26.4, ε=5e-4, γ=5, 3 chains × 500 draws'."""
    if not settings:
        return "sampler settings not given"
    s = dict(settings)
    parts = []
    for key, sym in (("nbeta", "nβ"), ("step_size", "ε"), ("gamma", "γ")):
        if s.get(key) is not None:
            parts.append(f"{sym}={fmt_num(float(s[key]))}")
    if s.get("chains") is not None and s.get("draws") is not None:
        burn = f" after {s['burnin']} burn-in" if s.get("burnin") is not None else ""
        parts.append(f"{s['chains']} chains × {s['draws']} draws{burn}")
    if s.get("baseline") is not None:
        parts.append(f"baseline {s['baseline']}")
    if s.get("data") is not None:
        parts.append(f"data-refined: posterior loss on {s['data']} pairs")
    return ", ".join(parts)


def unit_label(unit: str) -> str:
    """The x-axis name of a training unit (``train.unit``)."""
    return "optimiser step" if unit == "step" else "epoch"


def trajectory_figure(
    metrics: Mapping[str, Sequence[float]],
    llc: Mapping[str, Any] | None = None,
    theory: Sequence[Mapping[str, Any]] | None = None,
    marks: Mapping[str, float | None] | None = None,
    title: str | None = None,
    *,
    band: BandKind = "minmax",
    sampler: Mapping[str, Any] | None = None,
    theory_factor: float = 3.0,
    x_label: str = "epoch",
) -> Figure:
    """Loss, accuracy and LLC against epoch with t_mem/t_gen marked (paper A Fig. 3 style).

    metrics: epoch, train_loss, val_loss, train_acc, val_acc (equal length, one replica).
    llc: epoch [E], llc [E, C] per chain, optional llc_laplace [E], flagged [E] (bool),
    sampler (dict as in :func:`describe_sampler`). theory: [{name, value}]; a value more than
    ``theory_factor``× outside the plotted LLC range is listed as off scale instead of drawn.
    """
    with style():
        return _trajectory_figure(
            metrics, llc, theory or [], marks, title, band, sampler, theory_factor, x_label
        )


def _trajectory_figure(
    metrics: Mapping[str, Sequence[float]],
    llc: Mapping[str, Any] | None,
    theory: Sequence[Mapping[str, Any]],
    marks: Mapping[str, float | None] | None,
    title: str | None,
    band: BandKind,
    sampler: Mapping[str, Any] | None,
    factor: float,
    x_label: str,
) -> Figure:
    """Body of :func:`trajectory_figure`, run inside the house style."""
    epoch = np.asarray(metrics["epoch"], dtype=float)
    has_llc = llc is not None and len(llc.get("epoch", [])) > 0
    fig, axes = new_figure(3 if has_llc else 2, 1, width=9.0, row_height=2.3, sharex=True)
    ax_loss, ax_acc = axes[0, 0], axes[1, 0]
    for split, name in (("train", "train"), ("val", "validation")):
        loss = np.asarray(metrics[f"{split}_loss"], dtype=float)
        ax_loss.plot(
            epoch, np.where(loss > 0, loss, np.nan), color=COLORS[split], label=f"{name} loss"
        )
        ax_acc.plot(
            epoch,
            np.asarray(metrics[f"{split}_acc"], dtype=float),
            color=COLORS[split],
            label=f"{name} accuracy",
        )
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (log scale)")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(-0.03, 1.03)
    for ax in (ax_loss, ax_acc):
        mark_times(ax, marks, label=ax is ax_acc)
        legend_outside(ax)

    if has_llc:
        assert llc is not None
        captions = _plot_llc_panel(
            axes[2, 0], llc, theory, marks, band, sampler or llc.get("sampler"), factor
        )
    else:
        captions = ["No LLC estimates for this run."]
        if theory:
            captions.append(
                "Theory: "
                + "; ".join(f"{t['name']} = {fmt_num(float(t['value']))}" for t in theory)
                + "."
            )
    axes[-1, 0].set_xlabel(x_label)
    if title:
        fig.suptitle(title, fontsize=11)
    add_caption(fig, "\n".join(captions))
    return fig


def _plot_llc_panel(
    ax: Axes,
    llc: Mapping[str, Any],
    theory: Sequence[Mapping[str, Any]],
    marks: Mapping[str, float | None] | None,
    band: BandKind,
    sampler: Mapping[str, Any] | None,
    factor: float,
) -> list[str]:
    """Draw the LLC panel; returns caption lines saying which quantity is which."""
    ep = np.asarray(llc["epoch"], dtype=float)
    vals = np.asarray(llc["llc"], dtype=float)
    if vals.ndim == 1:
        vals = vals[:, None]
    n_chains = vals.shape[1]
    plot_band(
        ax,
        ep,
        vals,
        color=COLORS["llc"],
        kind=band,
        label=f"SGLD $\\hat\\lambda$, mean of {n_chains} chain{'s' * (n_chains > 1)}",
    )
    shown = [vals[np.isfinite(vals)]]
    shown += plot_restricted(ax, llc.get("restricted"), band)
    lap = llc.get("llc_laplace")
    if lap is not None and np.isfinite(np.asarray(lap, dtype=float)).any():
        lap = np.asarray(lap, dtype=float)
        ax.plot(
            ep,
            lap,
            color=COLORS["laplace"],
            marker="s",
            markersize=3,
            linewidth=1.3,
            label="Laplace prediction $\\lambda_{Lap}$",
        )
        shown.append(lap[np.isfinite(lap)])
    else:
        lap = None
    flagged = llc.get("flagged")
    if flagged is not None and np.asarray(flagged, dtype=bool).any():
        f = np.asarray(flagged, dtype=bool)
        mean = band_stats(vals, band)[0]
        ax.plot(
            ep[f],
            mean[f],
            linestyle="none",
            marker="o",
            markerfacecolor="none",
            markeredgecolor=COLORS["flag"],
            markersize=7,
            mew=1.2,
            label=f"health flag ({int(f.sum())} of {len(f)} checkpoints)",
        )
    mark_times(ax, marks, label=False)

    data = np.concatenate(shown)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (math.nan, math.nan)
    on, off = split_theory(merge_equal(theory), lo, hi, factor)
    for i, t in enumerate(on):
        ax.axhline(
            float(t["value"]),
            color=THEORY_COLORS[i % len(THEORY_COLORS)],
            linestyle=THEORY_STYLES[i % len(THEORY_STYLES)],
            linewidth=1.2,
            label=f"{t['name']} = {fmt_num(float(t['value']))}",
        )
    for t in off:
        ax.plot(
            [],
            [],
            linestyle="none",
            label=f"{t['name']} = {fmt_num(float(t['value']))} (off scale)",
        )
    ax.set_ylabel("LLC")
    legend_outside(ax)
    band_word = "min–max" if band == "minmax" else "±1 std"
    lines = [
        f"LLC panel: SGLD estimate λ̂ = nβ·(E[L_B(w)] − L_n(w*)) from training data only; "
        f"line = mean over chains, band = {band_word} over chains; "
        f"{describe_sampler(sampler)}."
    ]
    extra = []
    if llc.get("restricted"):
        extra.append(restricted_caption(llc["restricted"]))
    if lap is not None:
        extra.append("λ_Lap = localised Laplace prediction at the same nβ and γ")
    if theory:
        extra.append(
            "closed forms count identifiable coordinates over generic inputs, "
            "numeric rank(J)/2 counts what the data can resolve"
        )
    gaps = int((~np.isfinite(vals).any(axis=1)).sum())
    if gaps:
        extra.append(f"{gaps} checkpoint{'s' * (gaps > 1)} with no finite chain (gaps)")
    if off:
        extra.append(f"values beyond {fmt_num(factor)}× the plotted range are listed, not drawn")
    if extra:
        lines.append("; ".join(extra) + ".")
    return lines


def plot_restricted(
    ax: Axes, restricted: Mapping[str, Mapping[str, Any]] | None, band: BandKind = "minmax"
) -> list[np.ndarray]:
    """One λ̂ series per weight restriction (name -> {epoch, llc [E, C], patterns}); returns
    the finite values drawn, for the axis range."""
    shown = []
    for i, (name, r) in enumerate((restricted or {}).items()):
        vals = np.asarray(r["llc"], dtype=float)
        mean, lo, hi = band_stats(vals if vals.ndim == 2 else vals[:, None], band)
        x = np.asarray(r["epoch"], dtype=float)
        color = RESTRICT_COLORS[i % len(RESTRICT_COLORS)]
        ax.plot(x, mean, color=color, marker="^", markersize=3, linestyle="--",
                label=f"$\\hat\\lambda$ restricted to {name}")  # fmt: skip
        ax.fill_between(x, lo, hi, color=color, alpha=0.12, linewidth=0)
        shown.append(vals[np.isfinite(vals)])
    return shown


def restricted_caption(restricted: Mapping[str, Mapping[str, Any]]) -> str:
    """Caption text naming each restriction's patterns."""
    parts = [f"{k} = {', '.join(v.get('patterns', []))}" for k, v in restricted.items()]
    return (
        "dashed: λ̂ with only the named weights sampled (the rest held at w*), same sampler "
        f"and chain noise ({'; '.join(parts)})"
    )


# ---------------------------------------------------------------------------------------------
# Output.


def figure_png(fig: Figure, dpi: int = 150) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = 150) -> bytes:
    """Write a figure as PNG atomically (temp file + rename); returns the bytes for embedding."""
    data = figure_png(fig, dpi)
    atomic_write(Path(path), data)
    return data

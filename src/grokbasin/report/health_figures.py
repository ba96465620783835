"""Sampler-health figures from plain arrays: a heat strip over every checkpoint and, per chosen
checkpoint, chain traces, a rank plot and the recorded norms.

The rank plot follows ArviZ's: all draws of a checkpoint are ranked together and each chain's
ranks are histogrammed; well-mixed chains give flat histograms (the dashed line), a chain stuck
high or low gives a sloped or lopsided one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from grokbasin.llc.diagnostics import Thresholds
from grokbasin.report.figures import PALETTE, add_caption, fmt_num, new_figure, style

STRIP_ROWS = ("R-hat", "ESS", "|trend|", "MALA acceptance")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N along the last axis of x [G, N], ties given their average rank (as ArviZ's
    rank plot does through scipy's rankdata)."""
    G, N = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    idx = np.broadcast_to(np.arange(N), (G, N))
    differ = xs[:, 1:] != xs[:, :-1]
    first = np.concatenate([np.ones((G, 1), bool), differ], axis=1)  # a tie block starts
    last = np.concatenate([differ, np.ones((G, 1), bool)], axis=1)  # a tie block ends
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, idx, N - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((G, N))
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=1)
    return ranks


def rank_histograms(x: np.ndarray, bins: int = 10) -> np.ndarray:
    """Per group and chain, counts of the pooled ranks of x [G, C, D] in ``bins`` equal bins:
    [G, C, bins]. Each group's counts sum to C·D; well-mixed chains have about D/bins each."""
    x = np.asarray(x, dtype=np.float64)
    G, C, D = x.shape
    if G == 0 or C * D == 0:
        return np.zeros((G, C, bins))
    ranks = average_ranks(x.reshape(G, C * D)).reshape(G, C, D)
    b = np.clip(np.floor((ranks - 1) * bins / (C * D)).astype(np.int64), 0, bins - 1)
    return (b[..., None] == np.arange(bins)).sum(axis=2).astype(np.float64)


def badness(
    rhat: np.ndarray, ess: np.ndarray, trend: np.ndarray, th: Thresholds | None = None
) -> np.ndarray:
    """Each statistic over its threshold, so 1 is the flag boundary and above 1 is flagged:
    [(R-hat − 1)/(limit − 1), min ESS/ESS, |trend|/trend_rel] per checkpoint -> [3, N]."""
    th = th or Thresholds()
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (np.asarray(rhat, float) - 1.0) / (th.rhat - 1.0)
        e = th.min_ess / np.asarray(ess, float)
        t = np.abs(np.asarray(trend, float)) / th.trend_rel
    return np.stack([np.clip(r, 0, None), e, t])


def health_strip(
    labels: Sequence[str],
    rhat: Sequence[float],
    ess: Sequence[float],
    trend: Sequence[float],
    flags: Sequence[Sequence[str]],
    accept: Sequence[float] | None = None,
    thresholds: Thresholds | None = None,
) -> Figure:
    """One column per checkpoint, one row per statistic coloured by its distance to the flag
    threshold (blue ok, red flagged), with the values written in and flagged columns marked."""
    th = thresholds or Thresholds()
    n = len(labels)
    bad = badness(np.asarray(rhat), np.asarray(ess), np.asarray(trend), th)
    vals = [np.asarray(rhat, float), np.asarray(ess, float), np.abs(np.asarray(trend, float))]
    rows = list(STRIP_ROWS[:3])
    if accept is not None:
        acc = np.asarray(accept, float)
        bad = np.vstack(
            [bad, np.where(np.isfinite(acc), np.clip((1 - acc) / 0.1, 0, None), np.nan)]
        )
        vals.append(acc)
        rows.append(STRIP_ROWS[3])
    with style():
        fig, axes = new_figure(
            1, 1, width=min(2.5 + 0.42 * n, 16.0), row_height=0.45 * len(rows) + 1.3
        )
        ax = axes[0, 0]
        ax.grid(False)
        img = np.log2(np.clip(np.where(np.isfinite(bad), bad, np.nan), 1 / 8, 8))
        ax.imshow(img, aspect="auto", cmap="RdYlBu_r", vmin=-3, vmax=3, interpolation="nearest")
        if n <= 40:
            for i, v in enumerate(vals):
                for j in range(n):
                    text = "—" if not math.isfinite(v[j]) else _cell(rows[i], float(v[j]))
                    dark = bool(abs(img[i, j]) > 1.8) if np.isfinite(img[i, j]) else False
                    color = "white" if dark else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color=color)
        for j, f in enumerate(flags):
            if f:
                ax.plot(j, -0.75, marker="v", color="#C00000", markersize=5, clip_on=False)
        ax.set_yticks(range(len(rows)), rows)
        step = max(1, math.ceil(n / 30))
        ax.set_xticks(range(0, n, step), [labels[j] for j in range(0, n, step)], rotation=90)
        ax.set_xlabel("checkpoint")
        ax.set_ylim(len(rows) - 0.5, -1.0)
        add_caption(
            fig,
            f"Colour: statistic over its flag threshold (R-hat {fmt_num(th.rhat)}, ESS "
            f"{fmt_num(th.min_ess)}, |trend| {fmt_num(th.trend_rel)}; MALA acceptance against "
            "0.9), blue = healthy, red = flagged; ▼ = checkpoint carries a flag.",
        )
    return fig


def _cell(row: str, v: float) -> str:
    """A statistic's value as written in the strip."""
    if row == "ESS":
        return f"{v:.0f}"
    if row == "|trend|":
        return f"{100 * v:.0f}%"
    return f"{v:.2f}"


def checkpoint_figure(
    title: str,
    llc: np.ndarray,
    ranks: np.ndarray,
    norms: Mapping[str, np.ndarray] | None = None,
    steps: np.ndarray | None = None,
    burnin: int = 0,
) -> Figure:
    """Chain traces on the λ̂ scale [C, D], the rank plot [C, bins] and, where recorded, the
    distance/gradient/noise norms [C, T] at the kept ``steps`` (burn-in marked)."""
    has_norms = bool(norms) and steps is not None and len(steps) > 0
    with style():
        fig, axes = new_figure(1, 3 if has_norms else 2, width=11.0 if has_norms else 8.0)
        ax_t, ax_r = axes[0, 0], axes[0, 1]
        C, D = llc.shape
        for c in range(C):
            color = PALETTE[c % len(PALETTE)]
            ax_t.plot(np.arange(D), llc[c], color=color, linewidth=0.7, label=f"chain {c}")
        ax_t.set_xlabel("draw (after burn-in)")
        ax_t.set_ylabel("nβ·(L_B(w) − L_n(w*))")
        ax_t.set_title("chain traces (λ̂ scale)")
        bins = ranks.shape[1]
        for c in range(C):
            h = ranks[c] / max(float(ranks[c].max()), 1.0) * 0.85
            ax_r.bar(
                np.arange(bins), h, bottom=c, width=1.0, color=PALETTE[c % len(PALETTE)],
                edgecolor="white", linewidth=0.4, align="edge",
            )  # fmt: skip
            ax_r.plot(
                [0, bins], [c + 0.85 * (D / bins) / max(float(ranks[c].max()), 1.0)] * 2,
                color="#333333", linestyle="--", linewidth=0.8,
            )  # fmt: skip
        ax_r.set_yticks(np.arange(C) + 0.4, [f"chain {c}" for c in range(C)])
        ax_r.set_xticks([0, bins], ["lowest", "highest"])
        ax_r.set_xlabel("rank of draw among all chains")
        ax_r.set_title("rank plot (flat = mixed)")
        ax_r.grid(False)
        if has_norms:
            assert norms is not None and steps is not None
            _plot_norms(axes[0, 2], norms, steps, burnin)
        fig.suptitle(title, fontsize=9.5)
    return fig


def trace_grid(
    labels: Sequence[str], llc: Sequence[np.ndarray | None], flagged: Sequence[bool], ncols: int = 7
) -> Figure:
    """Small multiples: every checkpoint's chain traces [C, D] on the λ̂ scale in one figure
    (flagged checkpoints titled in red), so all checkpoints are seen at a glance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    n = len(labels)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    with style():
        fig = Figure(figsize=(1.6 * ncols, 1.05 * nrows + 0.3))
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        fig.subplots_adjust(left=0.02, right=0.99, bottom=0.02, top=1 - 0.3 / (1.05 * nrows + 0.3),
                            wspace=0.08, hspace=0.45)  # fmt: skip
        for ax in axes[n:]:
            ax.axis("off")
        for ax, lab, x, bad in zip(axes, labels, llc, flagged, strict=False):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(lab, fontsize=7, color="#C00000" if bad else "#333333", pad=2)
            for spine in ax.spines.values():
                spine.set_color("#C00000" if bad else "#BBBBBB")
            if x is None:
                ax.text(0.5, 0.5, "no traces", ha="center", va="center", fontsize=6)
                continue
            for c in range(x.shape[0]):
                ax.plot(x[c], color=PALETTE[c % len(PALETTE)], linewidth=0.5)
        fig.suptitle(
            "chain traces (λ̂ scale) at every checkpoint; red = flagged", fontsize=8, y=0.995
        )
    return fig


NORM_STYLE = {"distance": "#009E73", "grad": "#0072B2", "noise": "#D55E00"}
NORM_LABEL = {"distance": "‖w − w*‖", "grad": "gradient drift per step", "noise": "noise per step"}


def _plot_norms(ax, norms: Mapping[str, np.ndarray], steps: np.ndarray, burnin: int) -> None:
    """Distance from w* and the gradient and noise step norms (median over chains, min–max)."""
    for name, color in NORM_STYLE.items():
        v = norms.get(name)
        if v is None:
            continue
        v = np.asarray(v, float)
        with np.errstate(all="ignore"):
            ax.plot(steps, np.nanmedian(v, axis=0), color=color, label=NORM_LABEL[name])
            ax.fill_between(
                steps, np.nanmin(v, axis=0), np.nanmax(v, axis=0), color=color, alpha=0.2, lw=0
            )
    if burnin > 0:
        ax.axvline(burnin, color="#555555", linestyle=":", linewidth=1.0, label="end of burn-in")
    ax.set_yscale("log")
    ax.set_xlabel("sampler step")
    ax.set_title("norms (median, min–max over chains)")
    ax.legend(fontsize=6.5, loc="best")


__all__ = [
    "average_ranks",
    "badness",
    "checkpoint_figure",
    "health_strip",
    "rank_histograms",
    "trace_grid",
]

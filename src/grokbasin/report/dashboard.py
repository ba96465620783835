"""The report's sampler dashboard: per-checkpoint health read back from a run directory.

For one sampler hash and nβ it gathers, per (epoch, training replica), the λ̂-scale chain traces
(llc_traces/<hash>.safetensors), R-hat, ESS, trend and flags (llc.parquet) and, when the run was
sampled with ``llc.record_norms``/``llc.mala``, the norm traces and MALA acceptance
(llc_traces/<hash>.health.safetensors). It renders a heat strip over every checkpoint, a table,
and detail figures for at most a few checkpoints (the most serious flags first), so the report
stays readable at 20+ checkpoints.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.errors import CorruptFileError
from grokbasin.llc import health_traces
from grokbasin.llc.advice import row_flags, severity
from grokbasin.llc.diagnostics import Thresholds, llc_scale
from grokbasin.report.html import Image, Section, Table
from grokbasin.store import query
from grokbasin.store.rundir import RunDir

DETAIL_LIMIT = 4
"""Most checkpoints drawn in detail (traces, rank plot, norms)."""


@dataclass
class CheckpointHealth:
    """Everything the dashboard shows about one (epoch, training replica) at one nβ."""

    epoch: int
    replica: int
    nbeta: float
    llc_mean: float
    rhat: float
    ess: float
    trend: float
    flags: list[str]
    init_loss: np.ndarray  # [C]
    llc: np.ndarray | None = None  # [C, D] λ̂-scale draws
    norms: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [C, T]
    accept: np.ndarray | None = None  # [C] mean MALA acceptance

    @property
    def label(self) -> str:
        """Short name: '120' or '120/r1' when the run has several replicas."""
        return str(self.epoch) if self.replica == 0 else f"{self.epoch}/r{self.replica}"


def _main_rows(rows: Sequence[Mapping[str, Any]], nbeta: float) -> list[Mapping[str, Any]]:
    """Rows at nβ, of the unrestricted estimate where rows carry a restriction column."""
    at = [r for r in rows if query.nbeta_matches(r.get("nbeta"), nbeta)]
    plain = [r for r in at if not r.get("restriction")]
    return plain or at


def checkpoints_of(rows: Sequence[Mapping[str, Any]], nbeta: float) -> list[CheckpointHealth]:
    """Per (epoch, replica), in that order, the statistics that llc.parquet rows hold."""
    groups: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for r in _main_rows(rows, nbeta):
        groups.setdefault((int(r["epoch"]), int(r.get("replica") or 0)), []).append(r)
    out = []
    for (e, rep), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: int(r.get("chain") or 0))
        llc = np.array([np.nan if r.get("llc") is None else r["llc"] for r in rs], float)
        out.append(
            CheckpointHealth(
                epoch=e,
                replica=rep,
                nbeta=float(rs[0].get("nbeta") or nbeta),
                llc_mean=float(np.nanmean(llc)) if np.isfinite(llc).any() else float("nan"),
                rhat=_f(rs[0].get("rhat")),
                ess=_f(rs[0].get("ess")),
                trend=_f(rs[0].get("trend")),
                flags=sorted({f for r in rs for f in row_flags(r)}),
                init_loss=np.array([_f(r.get("init_loss")) for r in rs]),
            )
        )
    return out


def _f(v: Any) -> float:
    return float("nan") if v is None else float(v)


def attach_traces(
    items: list[CheckpointHealth],
    traces: Mapping[str, Any],
    nbetas: Sequence[float],
    health: Mapping[int, Mapping[str, np.ndarray]],
) -> None:
    """Fill each item's λ̂-scale draws, norms and MALA acceptance from the traces files' arrays
    ([replica, nβ, chain, ...]); items whose arrays are missing or shaped otherwise keep None."""
    nb = np.asarray(nbetas, float)
    for it in items:
        b = int(np.argmin(np.abs(nb - it.nbeta))) if nb.size else 0
        t = traces.get(f"epoch_{it.epoch}")
        if t is not None:
            a = np.asarray(t, dtype=np.float64)
            if a.ndim == 4 and it.replica < a.shape[0] and b < a.shape[1]:
                if a.shape[2] == len(it.init_loss):
                    it.llc = llc_scale(a[it.replica, b][None], it.init_loss[None], [it.nbeta])[0]
        for name, v in health.get(it.epoch, {}).items():
            v = np.asarray(v)
            if v.ndim >= 3 and it.replica < v.shape[0] and b < v.shape[1]:
                if name == health_traces.ACCEPT:
                    it.accept = v[it.replica, b]
                else:
                    it.norms[name] = v[it.replica, b]


def select_detail(items: Sequence[CheckpointHealth], limit: int = DETAIL_LIMIT) -> list[int]:
    """Indices of the checkpoints to draw in detail, in checkpoint order: the flagged ones with
    the most serious flags first (at most ``limit``); with none flagged, the first, middle and
    last."""
    flagged = [i for i, it in enumerate(items) if it.flags]
    if flagged:
        best = sorted(flagged, key=lambda i: (severity(items[i].flags), i))[:limit]
        return sorted(best)
    n = len(items)
    return sorted({0, n // 2, n - 1}) if n else []


GRID_LIMIT = 56
"""Most checkpoints in the small-multiples trace grid (8 rows of 7)."""


def grid_items(items: Sequence[CheckpointHealth], limit: int = GRID_LIMIT) -> list[int]:
    """Indices of the checkpoints in the trace grid: all, or ``limit`` evenly spaced."""
    n = len(items)
    if n <= limit:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, limit)})


def health_rows(items: Sequence[CheckpointHealth]) -> list[dict[str, Any]]:
    """The dashboard table: one row per checkpoint, norm columns only where recorded."""
    rows = []
    for it in items:
        row: dict[str, Any] = {
            "epoch": it.epoch,
            "replica": it.replica,
            "λ̂ mean": it.llc_mean,
            "R-hat": it.rhat,
            "ESS": it.ess,
            "trend": it.trend,
        }
        if "distance" in it.norms:
            row["‖w − w*‖ at end"] = float(np.nanmedian(it.norms["distance"][:, -1]))
        for name, col in (("grad", "gradient drift"), ("noise", "noise")):
            if name in it.norms:
                row[f"{col} (median)"] = float(np.nanmedian(it.norms[name]))
        if it.accept is not None:
            row["MALA acceptance"] = float(np.nanmean(it.accept))
        row["flags"] = ", ".join(it.flags) or "—"
        rows.append(row)
    return rows


def load(
    run: RunDir, rows: Sequence[Mapping[str, Any]], sampler_hash: str, nbeta: float
) -> tuple[list[CheckpointHealth], np.ndarray, int, list[str]]:
    """Checkpoints with their traces, the kept norm steps, the burn-in and any problems met
    (a damaged traces file is reported, not fatal: the rest of the report still renders)."""
    items = checkpoints_of(rows, nbeta)
    problems: list[str] = []
    tpath = run.path / "llc_traces" / f"{sampler_hash}.safetensors"
    traces: dict[str, Any] = {}
    nbetas: list[float] = [nbeta]
    health: dict[int, dict[str, np.ndarray]] = {}
    meta: dict[str, Any] = {}
    try:
        if tpath.exists():
            t, m = run.load_tensors(tpath)
            traces = {k: v.numpy() for k, v in t.items()}
            nbetas = list(m.get("nbetas", nbetas))
        health, meta = health_traces.read_health(run, sampler_hash)
    except CorruptFileError as e:
        problems.append(str(e))
    attach_traces(items, traces, nbetas, health)
    steps, burnin = health_traces.meta_of(meta)
    return items, steps, burnin, problems


def dashboard_section(
    run_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    sampler_hash: str,
    nbeta: float,
    thresholds: Thresholds | None = None,
    limit: int = DETAIL_LIMIT,
) -> Section | None:
    """The 'Sampler dashboard' report section (None without LLC rows)."""
    from grokbasin.report.figures import figure_png
    from grokbasin.report.health_figures import (
        checkpoint_figure,
        health_strip,
        rank_histograms,
        trace_grid,
    )

    run = RunDir(run_dir)
    items, steps, burnin, problems = load(run, rows, sampler_hash, nbeta)
    if not items:
        return None
    has_accept = any(it.accept is not None for it in items)
    strip = health_strip(
        [it.label for it in items],
        [it.rhat for it in items],
        [it.ess for it in items],
        [it.trend for it in items],
        [it.flags for it in items],
        [float(np.nanmean(it.accept)) if it.accept is not None else np.nan for it in items]
        if has_accept
        else None,
        thresholds,
    )
    figures = [Image(f"Health of all {len(items)} checkpoints", figure_png(strip, 100))]
    grid = grid_items(items)
    if any(items[i].llc is not None for i in grid):
        fig = trace_grid(
            [items[i].label for i in grid],
            [items[i].llc for i in grid],
            [bool(items[i].flags) for i in grid],
        )
        some = "all" if len(grid) == len(items) else f"{len(grid)} evenly spaced of the"
        figures.append(
            Image(f"Chain traces at {some} {len(items)} checkpoints", figure_png(fig, 90))
        )
    for i in select_detail(items, limit):
        it = items[i]
        if it.llc is None:
            continue
        ranks = rank_histograms(it.llc[None])[0]
        title = _title(it)
        fig = checkpoint_figure(title, it.llc, ranks, it.norms, steps, burnin)
        what = "traces, rank plot and norms" if it.norms else "traces and rank plot"
        figures.append(Image(f"Checkpoint {it.label}: {what}", figure_png(fig, 90)))
    paragraphs = [
        f"At nβ = {nbeta:.4g}: every checkpoint's R-hat, bulk ESS and second-half trend (heat "
        "strip, table), and in detail the checkpoints with the most serious flags: chain traces "
        "on the λ̂ scale, a rank plot (all draws ranked together, one histogram per "
        "chain; flat when chains mix)"
        + (", and the norms of the sampler's steps." if any(it.norms for it in items) else ".")
    ]
    if not any(it.norms for it in items) or not has_accept:
        cmd = f"grokbasin llc estimate {shlex.quote(str(run.path))} --record-norms --mala"
        paragraphs.append(
            "Gradient, noise and distance-from-w* norms and MALA acceptance were not recorded "
            f"for these estimates; to see them, re-sample with `{cmd}`."
        )
    details = sum(f.caption.startswith("Checkpoint") for f in figures)
    if len(items) > details:
        paragraphs.append(
            f"Detail figures: {details} of {len(items)} checkpoints (most serious flags first); "
            "every checkpoint is in the strip, the trace grid (each panel on its own scale) and "
            "the table."
        )
    return Section(
        "Sampler dashboard",
        paragraphs=paragraphs,
        warnings=problems,
        tables=[Table(health_rows(items))],
        figures=figures,
    )


def _title(it: CheckpointHealth) -> str:
    """Figure title: where, the statistics and the flags of one checkpoint."""
    parts = [
        f"epoch {it.epoch}" + (f", replica {it.replica}" if it.replica else ""),
        f"R-hat {it.rhat:.3g}",
        f"ESS {it.ess:.0f}" if np.isfinite(it.ess) else "ESS —",
    ]
    if np.isfinite(it.trend):
        parts.append(f"trend {100 * it.trend:+.0f}%")
    if it.accept is not None:
        parts.append(f"MALA acceptance {float(np.nanmean(it.accept)):.2f}")
    parts.append("flags: " + (", ".join(it.flags) if it.flags else "none"))
    return "; ".join(parts)


__all__ = [
    "CheckpointHealth",
    "attach_traces",
    "checkpoints_of",
    "dashboard_section",
    "grid_items",
    "health_rows",
    "load",
    "select_detail",
]

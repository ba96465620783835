"""Shared steps of the named experiments: run a config list, read results, write outputs."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.config import RunConfig, build_config
from grokbasin.experiments.registry import ExperimentResult, out_dir
from grokbasin.experiments.sweep import SweepResult, expand, run_configs, sweep_from_dict
from grokbasin.store.rundir import RunDir, atomic_write, read_parquet


def configs(
    base: dict[str, Any],
    grid: dict[str, list[Any]] | None = None,
    points: list[dict[str, Any]] | None = None,
    seeds: list[int] | None = None,
    llc: dict[str, Any] | None = None,
    device: str = "cpu",
) -> list[RunConfig]:
    """Expand a sweep given inline (same structure as a sweep file)."""
    spec: dict[str, Any] = {
        "base": base,
        "grid": grid or {},
        "points": points or [{}],
        "device": device,
    }
    if seeds is not None:
        spec["seeds"] = seeds
    if llc is not None:
        spec["llc"] = llc
    return expand(sweep_from_dict(spec))


def execute(
    cfgs: list[RunConfig], root: Path, estimate: bool, backend: str, workers: int, progress: bool
) -> SweepResult:
    """Train (and sample) what is missing; everything finished is reused."""
    return run_configs(cfgs, root, estimate, backend, workers, None, progress)


def final_metrics(cfg: RunConfig, root: Path) -> dict[str, Any]:
    """Last checkpoint's metrics row of a single-replica run."""
    rows = read_parquet(RunDir(root / cfg.run_hash()).metrics).to_pylist()
    last = max(r["epoch"] for r in rows)
    return next(r for r in rows if r["epoch"] == last)


def metrics_rows(cfg: RunConfig, root: Path) -> list[dict[str, Any]]:
    return read_parquet(RunDir(root / cfg.run_hash()).metrics).to_pylist()


def llc_by_epoch(cfg: RunConfig, root: Path) -> dict[int, list[float]]:
    """Per-chain LLC estimates of this config's sampler setting, by checkpoint epoch."""
    run = RunDir(root / cfg.run_hash())
    if not run.llc.exists():
        return {}
    h = cfg.llc.sampler_hash()
    nbeta = cfg.llc.resolve_nbeta(cfg.task.n_train)
    out: dict[int, list[float]] = {}
    for r in read_parquet(run.llc).to_pylist():
        if r.get("sampler_hash") != h:
            continue
        if r.get("nbeta") is not None and not math.isclose(float(r["nbeta"]), nbeta, rel_tol=1e-6):
            continue  # extra temperatures of a temperature sweep
        out.setdefault(int(r["epoch"]), []).append(float(r["llc"]))
    return dict(sorted(out.items()))


def final_llc(cfg: RunConfig, root: Path, epoch: int | None = None) -> tuple[float, float]:
    """Mean and std over chains at ``epoch`` or the last estimated checkpoint (nan if none)."""
    by = llc_by_epoch(cfg, root)
    e = max(by, default=None) if epoch is None else epoch
    if e not in by:
        return math.nan, math.nan
    v = np.asarray(by[e])
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Plotted numbers as CSV (atomic); columns are the union of keys, first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = [cols] + [[r.get(c, "") for c in cols] for r in rows]
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    atomic_write(path, buf.getvalue().encode())
    return path


def base_cfg(**overrides: Any) -> dict[str, Any]:
    """A nested config dict from dotted overrides (validated later, per point)."""
    return (
        build_config({}, overrides).model_dump(mode="json", include={"task", "model", "train"}) | {}
    )


def log_linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Fit ln y = a + b·x (positive y only): slope b, intercept a, R² in log space."""
    from grokbasin.report.figures import linear_fit

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(xa) & np.isfinite(ya) & (ya > 0)
    return linear_fit(xa[ok], np.log(ya[ok]))


def solution_epoch(
    rows: Sequence[dict[str, Any]], train_acc: float = 0.99, val_acc: float = 0.95
) -> tuple[int, bool]:
    """The checkpoint that stands for a run's learned solution, and whether it generalised.

    Among checkpoints with train acc ≥ ``train_acc`` and val acc ≥ ``val_acc``, the one with the
    lowest training loss (the most converged generalising point: small runs trained with Adam can
    fall off the solution again later); the last checkpoint when none qualifies.
    """
    ok = [r for r in rows if r["train_acc"] >= train_acc and r["val_acc"] >= val_acc]
    if ok:
        return int(min(ok, key=lambda r: (r["train_loss"], r["epoch"]))["epoch"]), True
    return int(max(r["epoch"] for r in rows)), False


def solution_metrics(
    rows: Sequence[dict[str, Any]],
) -> tuple[int, bool, dict[str, Any]]:
    """(solution epoch, generalised, grokking metrics up to it): a later collapse is not counted."""
    from grokbasin.analysis.grokking import grokking_metrics

    end, ok = solution_epoch(rows)
    return end, ok, grokking_metrics([r for r in rows if r["epoch"] <= end])[0]


def at_solution(cfgs: Sequence[RunConfig], root: Path) -> list[RunConfig]:
    """Each trained config with its LLC checkpoint set to its :func:`solution_epoch`."""
    out = []
    for c in cfgs:
        e, _ = solution_epoch(metrics_rows(c, root))
        out.append(c.model_copy(update={"llc": c.llc.model_copy(update={"checkpoints": str(e)})}))
    return out


def finish(
    name: str,
    scale: str,
    root: Path,
    figs: dict[str, Any],
    tables: dict[str, list[dict[str, Any]]],
    summary: list[dict[str, Any]],
    notes: list[str],
    intro: str,
) -> ExperimentResult:
    """Write PNGs, CSVs and a one-section HTML report under root/experiments/<name>-<scale>."""
    from grokbasin.report.figures import save_png
    from grokbasin.report.html import Section, Table, write_report

    d = out_dir(root, name, scale)
    res = ExperimentResult(name, notes=notes, summary=summary)
    for key, fig in figs.items():
        res.figures[key] = d / f"{key}.png"
        save_png(fig, res.figures[key])
    for key, rows in tables.items():
        res.tables[key] = write_csv(d / f"{key}.csv", rows)
    section = Section(
        f"{name} ({scale})",
        paragraphs=[intro, *notes],
        tables=[Table(summary, title="summary")] if summary else [],
        figures=[res.figures[k].read_bytes() for k in figs],
    )
    res.report = write_report(d / "report.html", f"grokbasin experiment {name}", [section])
    return res

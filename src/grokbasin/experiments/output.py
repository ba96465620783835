"""What an experiment writes under root/experiments/<name>-<scale>/: figures, CSVs, a report."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokbasin.store.rundir import atomic_write


@dataclass
class ExperimentResult:
    """What an experiment produced: figure and table paths, summary rows and plain notes."""

    name: str
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: Path | None = None
    output: Any = None  # the Output of compute


def out_dir(root: str | Path, name: str, scale: str) -> Path:
    """Where an experiment writes its figures, tables and report."""
    return Path(root) / "experiments" / f"{name}-{scale}"


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Plotted numbers as CSV (atomic); columns are the union of keys, first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = [cols] + [[r.get(c, "") for c in cols] for r in rows]
    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    atomic_write(path, buf.getvalue().encode())
    return path


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

"""LLC results of every kind of run (paper A, paper B, external): one schema, writer, summary.

``llc.parquet`` holds one row per checkpoint × training replica × nβ × chain in :data:`SCHEMA`.
Every writer goes through :func:`merge_write`, which takes the run's lock, reads the file (a
damaged one stops the writer with the one-line :class:`CorruptFileError` naming it and how to
recover, so no row is ever dropped), replaces the rows keyed by the new rows' (sampler hash,
epoch) and keeps every other row. Rows are selected only through ``store.query.llc_rows``;
:func:`llc_summary` is the one per-checkpoint mean/std (sample std, ddof 1, over finite chains).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from grokbasin.store import query
from grokbasin.store.rundir import RunDir, read_parquet, write_parquet

SCHEMA = pa.schema(
    [
        ("epoch", pa.int64()),
        ("replica", pa.int64()),
        ("chain", pa.int64()),
        ("nbeta", pa.float64()),
        ("llc", pa.float64()),
        ("llc_regressed", pa.float64()),
        ("init_loss", pa.float64()),
        ("mean_loss", pa.float64()),
        ("rhat", pa.float64()),
        ("ess", pa.float64()),
        ("trend", pa.float64()),
        ("flags", pa.string()),
        ("sampler_hash", pa.string()),
        ("sampler_config", pa.string()),
        ("checkpoint", pa.string()),  # the checkpoint file's label (external runs; else null)
        ("restriction", pa.string()),  # weight-restriction name (null: every weight sampled)
    ]
)
"""The columns of every llc.parquet, whatever wrote it."""

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
STD_DDOF = 1
"""The one std over chains: the sample standard deviation."""

_NAN_DEFAULTS = {"llc_regressed", "rhat", "ess", "trend"}


def read_rows(run: RunDir) -> list[dict[str, Any]]:
    """Every stored row in file order ([] without a file); a damaged file: CorruptFileError."""
    return read_parquet(run.llc).to_pylist() if run.llc.exists() else []


def done_epochs(run: RunDir, sampler_hash: str) -> set[int]:
    """Epochs this sampler already estimated (at any nβ); a damaged file raises, never 'none'."""
    read_rows(run)  # the query skips damaged files with a warning; a writer must stop instead
    rows = query.llc_rows([query.Want(run.path, sampler_hash, "any")])[0]
    return {int(r["epoch"]) for r in rows}


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    """A row with every column of :data:`SCHEMA` (missing diagnostics NaN, others null)."""
    return {c: row.get(c, math.nan if c in _NAN_DEFAULTS else None) for c in COLUMNS}


def to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows as a table in :data:`SCHEMA` (other keys, such as a query's ``run``, dropped)."""
    return pa.Table.from_pylist([_normalise(r) for r in rows], schema=SCHEMA)


def merge_write(run: RunDir, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace the (sampler hash, epoch) rows that ``rows`` cover, keep the rest; return all.

    Holds the run's lock (reentrant: callers that already hold it just go on). Reads before it
    writes, so a damaged file raises CorruptFileError and nothing is written.
    """
    with run.lock(create=True):
        old = read_rows(run)
        fresh = {(r["sampler_hash"], int(r["epoch"])) for r in rows}
        keep = [r for r in old if (r["sampler_hash"], int(r["epoch"])) not in fresh]
        table = to_table([*keep, *rows])
        write_parquet(run.llc, table)
        return table.to_pylist()


def _flags(rows: Iterable[dict[str, Any]]) -> str:
    return ",".join(sorted({f for r in rows for f in (r.get("flags") or "").split(",") if f}))


def llc_summary(rows: Sequence[dict[str, Any]], nbeta: float | None = None) -> list[dict[str, Any]]:
    """Per (epoch, replica) at one nβ (default: the modal one, ``query``'s rule): λ̂ mean and
    sample std over finite chains, chain count, R-hat, regression estimate and health flags.
    Rows of weight restrictions are summarised per restriction (after the unrestricted ones,
    with a ``restriction`` key that unrestricted summaries do not have)."""
    if not rows:
        return []
    if nbeta is None:
        modal = query.select_nbeta(rows, "modal")
        nbeta = None if modal == "any" else float(modal)
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        if nbeta is None or query.nbeta_matches(r.get("nbeta"), nbeta):
            key = (r.get("restriction") or "", int(r["epoch"]), int(r.get("replica") or 0))
            groups.setdefault(key, []).append(r)
    out = []
    for (restriction, epoch, rep), rs in sorted(groups.items()):
        mean, std = mean_std([r["llc"] for r in rs])
        label = {"checkpoint": rs[0]["checkpoint"]} if rs[0].get("checkpoint") else {}
        if restriction:
            label["restriction"] = restriction
        out.append(
            {
                "epoch": epoch,
                "replica": rep,
                **label,
                "nbeta": rs[0].get("nbeta"),
                "llc_mean": mean,
                "llc_std": std,
                "chains": len(rs),
                "llc_regressed": rs[0].get("llc_regressed"),
                "rhat": rs[0].get("rhat"),
                "flags": _flags(rs),
            }
        )
    return out


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample std (ddof :data:`STD_DDOF`) of the finite values; NaN where undefined."""
    v = np.array([math.nan if x is None else float(x) for x in values], float)
    ok = v[np.isfinite(v)]
    mean = float(ok.mean()) if ok.size else math.nan
    std = float(ok.std(ddof=STD_DDOF)) if ok.size > STD_DDOF else math.nan
    return mean, std


__all__ = [
    "COLUMNS",
    "SCHEMA",
    "STD_DDOF",
    "done_epochs",
    "llc_summary",
    "mean_std",
    "merge_write",
    "read_rows",
    "to_table",
]

"""Query results out of ``grokbasin runs``: a capped table, or streamed CSV / JSON / Parquet.

Rows arrive as Arrow record batches (DuckDB's streaming cursor), so a result of millions of rows
is never held in memory: the table shows the first ``limit`` rows and counts the rest, and the
streaming formats write batch by batch, to stdout or atomically to a file.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("table", "csv", "json", "parquet")


def format_for(path: Path | None, as_json: bool, as_csv: bool) -> str:
    """The output format: the flags, else the file's suffix (.json, .parquet, else CSV)."""
    if as_json:
        return "json"
    if as_csv:
        return "csv"
    if path is None:
        return "table"
    return {".json": "json", ".parquet": "parquet"}.get(path.suffix.lower(), "csv")


def _rows(batches: Iterable[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
    for b in batches:
        yield from b.to_pylist()


def write_csv(cols: list[str], batches: Iterable[pa.RecordBatch], sink: IO[str]) -> None:
    w = csv.writer(sink)
    w.writerow(cols)
    for r in _rows(batches):
        w.writerow(["" if r[c] is None else r[c] for c in cols])


def write_json(cols: list[str], batches: Iterable[pa.RecordBatch], sink: IO[str]) -> None:
    """A JSON array of row objects, written one row at a time."""
    sink.write("[")
    for i, r in enumerate(_rows(batches)):
        sink.write(("," if i else "") + json.dumps(r, default=str))
    sink.write("]\n")


@contextmanager
def _atomic_text(path: Path, binary: bool = False) -> Iterator[Any]:
    """A file opened at a temporary name and renamed to ``path`` once complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.out.tmp")
    try:
        with open(tmp, "wb" if binary else "w", newline="" if not binary else None) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write(fmt: str, cols: list[str], reader: pa.RecordBatchReader, path: Path | None) -> None:
    """Stream every row in ``fmt`` to ``path`` (stdout when None)."""
    if fmt == "parquet":
        if path is None:
            raise ValueError("parquet output needs a file")
        with _atomic_text(path, binary=True) as f, pq.ParquetWriter(f, reader.schema) as w:
            for b in reader:
                w.write_batch(b)
        return
    writer = write_csv if fmt == "csv" else write_json
    if path is None:
        writer(cols, reader, sys.stdout)
        return
    with _atomic_text(path) as f:
        writer(cols, reader, f)


def head(reader: Iterable[pa.RecordBatch], limit: int) -> tuple[list[tuple], int]:
    """The first ``limit`` rows (0: all) as tuples and how many rows were left out."""
    rows: list[tuple] = []
    left = 0
    for b in reader:
        if limit and len(rows) >= limit:
            left += b.num_rows
            continue
        take = b if not limit else b.slice(0, limit - len(rows))
        cols = [c.to_pylist() for c in take.columns]
        rows.extend(zip(*cols, strict=True))
        left += b.num_rows - take.num_rows
    return rows, left

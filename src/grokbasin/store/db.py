"""The results database: DuckDB views over every run directory under a root (SPEC §5).

``connect(root)`` opens an in-memory DuckDB with three views, built fresh from the files on disk:

    runs     one row per run: run (hash), path, status, started, ended, final_epoch, has_llc, and
             the resolved config as struct columns ``task``, ``model``, ``train``, so SQL reads
             ``SELECT run, task.p, model.width FROM runs WHERE train.lr[1] = 1e-3``.
    metrics  every metrics.parquet row, with the owning run's hash in column ``run``.
    llc      every llc.parquet row, with ``run``.

No server and nothing written. A run without llc.parquet simply contributes no llc rows; an
unreadable file is skipped with a :class:`StoreWarning` naming it, so one bad run never hides the
others.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from grokbasin.errors import GrokbasinError
from grokbasin.store.rundir import RunDir

_METRICS_EMPTY = (
    "epoch BIGINT, step BIGINT, replica BIGINT, seed BIGINT, lr DOUBLE, weight_decay DOUBLE, "
    "train_loss DOUBLE, train_acc DOUBLE, val_loss DOUBLE, val_acc DOUBLE"
)
_LLC_EMPTY = (
    "epoch BIGINT, replica BIGINT, chain BIGINT, nbeta DOUBLE, llc DOUBLE, init_loss DOUBLE, "
    "mean_loss DOUBLE, sampler_hash VARCHAR"
)
_RUN_FILE = r"([^/\\]+)[/\\][^/\\]+\.parquet$"


class StoreWarning(UserWarning):
    """A run file could not be read and was left out of the database."""


@dataclass
class Inventory:
    """What a scan of the root found: run rows, readable Parquet files and skipped problems."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[Path] = field(default_factory=list)
    llc: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _parquet_ok(path: Path) -> str | None:
    """None if the Parquet footer and schema read; otherwise a one-line reason."""
    try:
        meta = pq.read_metadata(path)
        if meta.num_columns == 0:
            return "no columns"
    except (OSError, pa.ArrowInvalid) as e:
        return f"unreadable Parquet ({str(e).splitlines()[0][:120]})"
    return None


def _run_row(run: RunDir) -> dict[str, Any]:
    """The ``runs`` row for one directory; raises GrokbasinError/ValueError when unreadable."""
    try:
        cfg = yaml.safe_load(run.config.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable config ({e.__class__.__name__})") from None
    if not isinstance(cfg, dict):
        raise ValueError("config is not a mapping")
    prov = run.read_provenance()
    finished = bool(prov.get("finished"))
    status = "finished" if finished else ("partial" if run.state.exists() else "empty")
    return {
        "run": run.path.name,
        "path": str(run.path),
        "status": status,
        "started": prov.get("started"),
        "ended": prov.get("ended"),
        "final_epoch": prov.get("final_epoch"),
        "n_checkpoints": len(run.checkpoint_epochs()),
        "has_llc": run.llc.exists(),
        "device": cfg.get("device"),
        "task": cfg.get("task") or {},
        "model": cfg.get("model") or {},
        "train": cfg.get("train") or {},
    }


def scan(root: str | Path = "runs") -> Inventory:
    """Every run directory (``root/<hash>/config.yaml``) and its readable Parquet files."""
    inv = Inventory()
    base = Path(root)
    if not base.is_dir():
        return inv
    for d in sorted(p for p in base.iterdir() if (p / "config.yaml").is_file()):
        run = RunDir(d)
        try:
            inv.runs.append(_run_row(run))
        except (GrokbasinError, ValueError) as e:
            inv.problems.append(f"{run.config}: skipped run ({e})")
            continue
        for path, bucket in ((run.metrics, inv.metrics), (run.llc, inv.llc)):
            if not path.exists():
                continue
            why = _parquet_ok(path)
            if why:
                inv.problems.append(f"{path}: skipped ({why})")
            else:
                bucket.append(path)
    return inv


def _files_view(con: duckdb.DuckDBPyConnection, name: str, files: list[Path], empty: str) -> None:
    if not files:
        con.execute(f"CREATE TEMP TABLE {name} ({empty}, run VARCHAR)")
        return
    lst = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    con.execute(
        f"CREATE VIEW {name} AS SELECT * EXCLUDE (filename), "
        f"regexp_extract(filename, '{_RUN_FILE}', 1) AS run "
        f"FROM read_parquet([{lst}], union_by_name = true, filename = true)"
    )


def connect(root: str | Path = "runs") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views ``runs``, ``metrics`` and ``llc`` over ``root``."""
    inv = scan(root)
    for msg in inv.problems:
        warnings.warn(msg, StoreWarning, stacklevel=2)
    con = duckdb.connect(":memory:")
    if inv.runs:
        con.register("_runs_arrow", pa.Table.from_pylist(inv.runs))
        con.execute("CREATE VIEW runs AS SELECT * FROM _runs_arrow")
    else:
        con.execute(
            "CREATE TEMP TABLE runs (run VARCHAR, path VARCHAR, status VARCHAR, started VARCHAR, "
            "ended VARCHAR, final_epoch BIGINT, n_checkpoints BIGINT, has_llc BOOLEAN, "
            "device VARCHAR, task JSON, model JSON, train JSON)"
        )
    _files_view(con, "metrics", inv.metrics, _METRICS_EMPTY)
    _files_view(con, "llc", inv.llc, _LLC_EMPTY)
    return con


def llc_connection(files: list[Path]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose view ``llc`` holds these llc.parquet files' rows, with ``run``
    and ``file_row`` (row order within its file); unreadable files are skipped with a warning."""
    ok = []
    for f in files:
        why = _parquet_ok(f)
        if why:
            warnings.warn(f"{f}: skipped ({why})", StoreWarning, stacklevel=2)
        else:
            ok.append(f)
    con = duckdb.connect(":memory:")
    if not ok:
        con.execute(f"CREATE TEMP TABLE llc ({_LLC_EMPTY}, run VARCHAR, file_row BIGINT)")
        return con
    lst = ", ".join("'" + str(f).replace("'", "''") + "'" for f in ok)
    con.execute(
        f"CREATE VIEW llc AS SELECT * EXCLUDE (filename, file_row_number), "
        f"regexp_extract(filename, '{_RUN_FILE}', 1) AS run, file_row_number AS file_row "
        f"FROM read_parquet([{lst}], union_by_name = true, filename = true, "
        f"file_row_number = true)"
    )
    return con


def query(root: str | Path, sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of ``sql`` over the views; a SQL mistake is a one-line error."""
    con = connect(root)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description or []]
        return cols, cur.fetchall()
    except duckdb.Error as e:
        raise GrokbasinError(f"SQL error: {str(e).splitlines()[0]}") from None
    finally:
        con.close()


LIST_SQL = """
SELECT r.run, r.status, r.task.p AS p, r.model.name AS model, r.model.width AS width,
       r.train.seeds AS seeds, r.train.lr AS lr, r.train.weight_decay AS wd,
       r.final_epoch AS epoch, m.train_acc, m.val_acc, r.has_llc
FROM runs r LEFT JOIN (
    SELECT run, avg(train_acc) AS train_acc, avg(val_acc) AS val_acc FROM metrics
    WHERE (run, epoch) IN (SELECT (run, max(epoch)) FROM metrics GROUP BY run) GROUP BY run
) m USING (run)
ORDER BY r.started NULLS LAST, r.run
"""


def list_runs(root: str | Path = "runs") -> tuple[list[str], list[tuple]]:
    """One summary row per run (hash, status, p, model, width, hyperparameters, final accuracy)."""
    if not scan(root).runs:
        return ["run", "status"], []
    return query(root, LIST_SQL)


__all__ = [
    "Inventory",
    "StoreWarning",
    "connect",
    "list_runs",
    "llc_connection",
    "query",
    "scan",
    "LIST_SQL",
]

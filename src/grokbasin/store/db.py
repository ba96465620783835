"""The results database: DuckDB views over every run directory under a root (SPEC §5).

``connect(root)`` opens an in-memory DuckDB with three views, built fresh from the files on disk:

    runs     one row per run: run (hash), path, status, started, ended, final_epoch, has_llc, and
             the resolved config as struct columns ``task``, ``model``, ``train``, so SQL reads
             ``SELECT run, task.p, model.width FROM runs WHERE train.lr[1] = 1e-3``.
    metrics  every metrics.parquet row, with the owning run's hash in column ``run``.
    llc      every llc.parquet row, with ``run``.

No server and nothing written. A run without llc.parquet simply contributes no llc rows; an
unreadable, corrupt (checksum) or ill-typed file or config is skipped with a
:class:`StoreWarning` naming it, so one bad run never hides the others.

Queries are read-only by construction: every file is read (and its checksum verified) by
grokbasin into memory before the user's SQL runs, then DuckDB's file system access is switched
off and the configuration locked, so SQL can neither read nor write any file (COPY ... TO,
ATTACH, read_text, INSTALL are refused), and only query statements are accepted.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import yaml
from pydantic import ValidationError

from grokbasin.config import RunConfig, format_validation_error, safe_load
from grokbasin.errors import GrokbasinError
from grokbasin.store.rundir import RunDir, read_parquet

_METRICS_EMPTY = (
    "epoch BIGINT, step BIGINT, replica BIGINT, seed BIGINT, lr DOUBLE, weight_decay DOUBLE, "
    "train_loss DOUBLE, train_acc DOUBLE, val_loss DOUBLE, val_acc DOUBLE"
)
_LLC_EMPTY = (
    "epoch BIGINT, replica BIGINT, chain BIGINT, nbeta DOUBLE, llc DOUBLE, init_loss DOUBLE, "
    "mean_loss DOUBLE, sampler_hash VARCHAR"
)


class StoreWarning(UserWarning):
    """A run file could not be read and was left out of the database."""


@dataclass
class Inventory:
    """What a scan of the root found: run rows, readable Parquet files and skipped problems."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[Path] = field(default_factory=list)
    llc: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tables: dict[Path, pa.Table] = field(default_factory=dict)  # verified contents, by path


def _load_table(path: Path) -> pa.Table | str:
    """The file's verified table, or a one-line reason it was left out."""
    try:
        t = read_parquet(path)
    except GrokbasinError as e:
        return str(e).removeprefix(f"{path}: ")
    if t.num_columns == 0:
        return "no columns"
    return t


def _looks_like_run(d: Path) -> bool:
    """A folder holding any of a run's own files (a damaged run lacks some of them)."""
    marks = ("config.yaml", "provenance.json", "metrics.parquet", "checkpoints")
    return d.is_dir() and any((d / m).exists() for m in marks)


def _problem(run: RunDir, status: str) -> str | None:
    """What is wrong with the run and the command that fixes it (None: nothing)."""
    from grokbasin.store.binding import problems, remedy

    found = problems(run)
    if found:
        return f"{'; '.join(found)}; {remedy(run)}"
    if status in ("partial", "empty") and run.read_provenance() and not run.in_use():
        return (
            "training stopped before it finished (no process is training it); "
            f"`grokbasin runs --repair {run.path}` resumes it"
        )
    return None


def _bare_row(run: RunDir) -> dict[str, Any]:
    """The ``runs`` row of a folder without a readable config.yaml."""
    prov = run.read_provenance()
    return {
        "run": run.path.name,
        "kind": prov.get("kind", "modular"),
        "path": str(run.path),
        "status": "damaged",
        "started": prov.get("started"),
        "ended": prov.get("ended"),
        "final_epoch": prov.get("final_epoch"),
        "n_checkpoints": len(run.checkpoint_epochs()),
        "has_llc": run.llc.exists(),
        "device": prov.get("device"),
        "task": None,
        "model": None,
        "train": None,
    }


def _run_row(run: RunDir) -> dict[str, Any]:
    """The ``runs`` row for one directory; raises GrokbasinError/ValueError when unreadable."""
    try:
        cfg = safe_load(run.config.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable config ({e.__class__.__name__})") from None
    if not isinstance(cfg, dict):
        raise ValueError("config is not a mapping")
    if "kind" not in cfg:  # a built-in run: one schema; other kinds (external, paper-b) as written
        try:
            cfg = RunConfig.model_validate(cfg).model_dump(mode="json")
        except ValidationError as e:
            raise ValueError(f"invalid config: {format_validation_error(e)[:200]}") from None
    prov = run.read_provenance()
    finished = bool(prov.get("finished"))
    status = "finished" if finished else ("partial" if run.state.exists() else "empty")
    if prov.get("diverged"):
        status = "diverged"
    return {
        "run": run.path.name,
        "kind": cfg.get("kind", "modular"),
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
    for d in sorted(p for p in base.iterdir() if _looks_like_run(p)):
        run = RunDir(d)
        try:
            row = _run_row(run) if run.config.is_file() else _bare_row(run)
            row["problem"] = _problem(run, row["status"])
        except (GrokbasinError, ValueError) as e:
            inv.problems.append(f"{run.config}: skipped run ({e})")
            continue
        if row["problem"] and row["status"] not in ("partial", "empty"):
            row["status"] = "damaged"
        inv.runs.append(row)
        for path, bucket in ((run.metrics, inv.metrics), (run.llc, inv.llc)):
            if not path.exists():
                continue
            got = _load_table(path)
            if isinstance(got, str):
                inv.problems.append(f"{path}: skipped ({got})")
            else:
                bucket.append(path)
                inv.tables[path] = got
    return inv


_ARROW = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string()}


def _expected(columns: str) -> dict[str, pa.DataType]:
    return {n: _ARROW[t] for n, t in (c.strip().split() for c in columns.split(","))}


def _conform(t: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    """Known columns cast to their documented types (raises when a value cannot be)."""
    for i, name in enumerate(t.column_names):
        if name in types and t.schema.field(i).type != types[name]:
            t = t.set_column(i, name, t.column(i).cast(types[name]))
    return t


def _union(inv: Inventory, files: list[Path], columns: str) -> pa.Table | None:
    """All files' rows with a ``run`` column; a file whose types clash is skipped (warned)."""
    out: pa.Table | None = None
    types = _expected(columns)
    for f in files:
        try:
            t = _conform(inv.tables[f], types)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            inv.problems.append(f"{f}: skipped (a column has the wrong type: {str(e)[:120]})")
            continue
        t = t.append_column("run", pa.array([f.parent.name] * t.num_rows, pa.string()))
        try:
            out = t if out is None else pa.concat_tables([out, t], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            inv.problems.append(f"{f}: skipped (columns clash with other runs: {str(e)[:120]})")
    return out


def _files_view(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table | None, empty: str):
    if table is None:
        con.execute(f"CREATE TEMP TABLE {name} ({empty}, run VARCHAR)")
        return
    con.register(f"_{name}_arrow", table)
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")


_LOCKDOWN = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET lock_configuration = true",
)
_QUERY_STATEMENTS = {"SELECT", "EXPLAIN"}


def connect(root: str | Path = "runs") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views ``runs``, ``metrics`` and ``llc`` over ``root``."""
    inv = scan(root)
    metrics = _union(inv, inv.metrics, _METRICS_EMPTY)
    llc = _union(inv, inv.llc, _LLC_EMPTY)
    for msg in inv.problems:
        warnings.warn(msg, StoreWarning, stacklevel=2)
    con = duckdb.connect(":memory:")
    if inv.runs:
        con.register("_runs_arrow", pa.Table.from_pylist(inv.runs))
        con.execute("CREATE VIEW runs AS SELECT * FROM _runs_arrow")
    else:
        con.execute(
            "CREATE TEMP TABLE runs (run VARCHAR, kind VARCHAR, path VARCHAR, status VARCHAR, "
            "started VARCHAR, ended VARCHAR, final_epoch BIGINT, n_checkpoints BIGINT, "
            "has_llc BOOLEAN, device VARCHAR, task JSON, model JSON, train JSON, problem VARCHAR)"
        )
    _files_view(con, "metrics", metrics, _METRICS_EMPTY)
    _files_view(con, "llc", llc, _LLC_EMPTY)
    for setting in _LOCKDOWN:
        con.execute(setting)
    return con


def llc_connection(files: list[Path]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose view ``llc`` holds these llc.parquet files' verified rows, with
    ``run`` and ``file_row`` (row order within its file); unreadable files are skipped (warned)."""
    inv = Inventory()
    for f in files:
        got = _load_table(f)
        if isinstance(got, str):
            inv.problems.append(f"{f}: skipped ({got})")
            continue
        inv.llc.append(f)
        inv.tables[f] = got.append_column("file_row", pa.array(range(got.num_rows), pa.int64()))
    llc = _union(inv, inv.llc, _LLC_EMPTY + ", file_row BIGINT")
    for msg in inv.problems:
        warnings.warn(msg, StoreWarning, stacklevel=2)
    con = duckdb.connect(":memory:")
    _files_view(con, "llc", llc, _LLC_EMPTY + ", file_row BIGINT")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse, in one line, any statement that is not a query (COPY, ATTACH, SET, CREATE...)."""
    try:
        statements = con.extract_statements(sql) if sql.strip() else []
    except duckdb.Error as e:
        raise GrokbasinError(f"SQL error: {str(e).splitlines()[0]}") from None
    if not statements:
        raise GrokbasinError(
            "--sql: no statement given; write a query over the views runs, metrics and llc, "
            "e.g. SELECT * FROM runs"
        )
    for st in statements:
        kind = st.type.name
        if kind not in _QUERY_STATEMENTS:
            raise GrokbasinError(
                f"--sql: only read queries (SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN) are "
                f"allowed; got a {kind} statement"
            )


def query(root: str | Path, sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of ``sql`` over the views; a SQL mistake is a one-line error."""
    con = connect(root)
    try:
        check_read_only(con, sql)
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description or []]
        return cols, cur.fetchall()
    except duckdb.Error as e:
        raise GrokbasinError(f"SQL error: {str(e).splitlines()[0]}") from None
    finally:
        con.close()


@contextmanager
def stream(
    root: str | Path, sql: str, batch_rows: int = 10_000
) -> Iterator[tuple[list[str], pa.RecordBatchReader]]:
    """Column names and a streaming reader of ``sql``'s result (never all rows in memory)."""
    con = connect(root)
    try:
        check_read_only(con, sql)
        rel = con.sql(sql)
        if rel is None:  # a statement without a result
            raise GrokbasinError("--sql: the statement returns no rows to show")
        read = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader  # duckdb 2 | 1
        reader = read(batch_rows)
        yield list(reader.schema.names), reader
    except duckdb.Error as e:
        raise GrokbasinError(f"SQL error: {str(e).splitlines()[0]}") from None
    finally:
        con.close()


LIST_SQL = """
SELECT r.run, r.status, r.task.p AS p, r.model.name AS model, r.model.width AS width,
       r.train.seeds AS seeds, r.train.lr AS lr, r.train.weight_decay AS wd,
       r.final_epoch AS epoch, m.train_acc, m.val_acc, r.has_llc, r.problem
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

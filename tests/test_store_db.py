"""The DuckDB results store: views over runs/metrics/llc, robust to missing and corrupt files."""

from __future__ import annotations

import pyarrow as pa
import pytest

from grokbasin.config import build_config
from grokbasin.errors import GrokbasinError
from grokbasin.store.db import StoreWarning, connect, list_runs, query
from grokbasin.store.rundir import write_parquet
from grokbasin.train.runner import train

TINY = {
    "task": {"p": 11, "frac": 0.5},
    "model": {"width": 24},
    "train": {"epochs": 40, "checkpoint_every": 20, "batch_size": 16, "lr": [3e-3]},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two finished tiny runs (p=11, seeds 0 and 1); the first gets a fake llc.parquet."""
    root = tmp_path_factory.mktemp("store")
    runs = [
        train(build_config(TINY, {"train.seeds": [s]}), root, progress=False).run for s in (0, 1)
    ]
    rows = [
        {
            "epoch": e,
            "replica": 0,
            "chain": c,
            "nbeta": 5.0,
            "llc": float(e + c),
            "init_loss": 0.1,
            "mean_loss": 0.2,
            "sampler_hash": "abc",
        }
        for e in (0, 20, 40)
        for c in (0, 1)
    ]
    write_parquet(runs[0].llc, rows)
    return root, runs


def test_views_answer_sql_over_runs_metrics_llc(store):
    root, runs = store
    cols, rows = query(root, "SELECT run, task.p, model.width, train.seeds[1] FROM runs ORDER BY 4")
    assert cols[0] == "run" and len(rows) == 2
    assert [r[1:] for r in rows] == [(11, 24, 0), (11, 24, 1)]
    # metrics: 3 checkpoints (0, 20, 40) x 1 replica per run, tagged with the run hash
    _, rows = query(root, "SELECT run, count(*) FROM metrics GROUP BY run ORDER BY run")
    assert sorted(rows) == sorted((r.path.name, 3) for r in runs)
    # llc: exact sum of the fake estimates (integers, exact); only the first run has any
    _, rows = query(root, "SELECT run, sum(llc) FROM llc GROUP BY run")
    assert rows == [(runs[0].path.name, float(sum(e + c for e in (0, 20, 40) for c in (0, 1))))]
    # a join across views works (the run column is the key)
    _, rows = query(root, "SELECT count(*) FROM llc JOIN runs USING (run) WHERE runs.has_llc")
    assert rows == [(6,)]


def test_list_runs_summarises_each_run(store):
    root, runs = store
    cols, rows = list_runs(root)
    assert len(rows) == 2 and {"run", "status", "p", "val_acc"} <= set(cols)
    by = {r[cols.index("run")]: dict(zip(cols, r, strict=True)) for r in rows}
    assert all(v["status"] == "finished" and v["epoch"] == 40 for v in by.values())
    assert by[runs[0].path.name]["has_llc"] and not by[runs[1].path.name]["has_llc"]


def test_empty_and_missing_root(tmp_path):
    assert list_runs(tmp_path / "nothing") == (["run", "status"], [])
    con = connect(tmp_path)
    for view in ("runs", "metrics", "llc"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)


def test_corrupt_file_is_skipped_with_a_warning(tmp_path):
    good = train(build_config(TINY, {"train.epochs": 20}), tmp_path, progress=False).run
    bad = train(
        build_config(TINY, {"train.epochs": 20, "train.seeds": [5]}), tmp_path, progress=False
    ).run
    bad.metrics.write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.yaml").write_text(": : not yaml [")
    with pytest.warns(StoreWarning) as rec:
        con = connect(tmp_path)
    msgs = " ".join(str(w.message) for w in rec)
    assert str(bad.metrics) in msgs and "junk" in msgs
    assert con.execute("SELECT DISTINCT run FROM metrics").fetchall() == [(good.path.name,)]
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)


def test_sql_error_is_one_line(store):
    root, _ = store
    with pytest.raises(GrokbasinError, match="SQL error"):
        query(root, "SELECT nope FROM runs")


def test_schema_drift_is_unioned(tmp_path):
    """Runs written by different versions (an extra metrics column) still read as one view."""
    r = train(build_config(TINY, {"train.epochs": 20}), tmp_path, progress=False).run
    t = pa.table({"epoch": [0], "replica": [0], "val_acc": [0.5], "extra": ["x"]})
    other = tmp_path / "feedface00"
    other.mkdir()
    (other / "config.yaml").write_text(r.config.read_text())
    write_parquet(other / "metrics.parquet", t)
    _, rows = query(tmp_path, "SELECT run, extra FROM metrics WHERE extra IS NOT NULL")
    assert rows == [("feedface00", "x")]

"""Validation before work, odd values, the file system, read-only SQL and reported divergence.

CLI behaviour is checked through ``grokbasin.cli.main`` (in process: the console script's own
error handling, minus the interpreter start-up), and with real subprocesses where permissions or
exit codes of the process itself matter."""

from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grokbasin.config import build_config
from grokbasin.errors import ConfigError, GrokbasinError
from grokbasin.pipeline import run as run_pipeline
from grokbasin.store.db import StoreWarning, list_runs, query
from grokbasin.store.rundir import read_parquet
from grokbasin.train.runner import train

TINY_FLAGS = [
    *("--p", "11", "--frac", "0.5", "--width", "24", "--epochs", "60"),
    *("--checkpoint-every", "20", "--batch-size", "16"),
]
LLC_FLAGS = [*("--chains", "2", "--draws", "10", "--burnin", "5", "--llc-batch-size", "16")]


def refused(args, cwd, run_cli, *needles: str) -> str:
    """Exit 2, exactly one line on stderr containing every needle, no traceback."""
    rc, _, err = run_cli(args, cwd)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ values are validated


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("train.lr", "inf", "train.lr"),
        ("train.lr", "nan", "train.lr"),
        ("train.lr", [1e-3, float("inf")], "train.lr"),
        ("train.weight_decay", "inf", "train.weight_decay"),
        ("train.eps", 0, "train.eps"),
        ("train.betas", [0.9, 1.0], "train.betas"),
        ("train.momentum", float("nan"), "train.momentum"),
        ("llc.step_size", float("inf"), "llc.step_size"),
        ("llc.gamma", float("nan"), "llc.gamma"),
        ("llc.nbeta", float("inf"), "llc.nbeta"),
        ("llc.nbetas", [10.0, float("inf")], "llc.nbetas"),
        ("llc.noise_level", float("inf"), "llc.noise_level"),
        ("model.init_scale", float("inf"), "model.init_scale"),
        ("task.frac", float("nan"), "task.frac"),
    ],
)
def test_rates_must_be_finite(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config({}, {key: value})


@pytest.mark.parametrize(
    "yaml_text,needle",
    [
        ("model: {width: true}", "model.width: must be an integer, got true"),
        ("task: {p: 2024-01-01}", "task.p: must be an integer, got the date 2024-01-01"),
        ("train: {lr: 2024-01-01}", "train.lr"),
        ("train: {epochs: 2024-01-01}", "train.epochs"),
        ("llc: {step_size: false}", "llc.step_size"),
        ("llc: {nbeta: yes}", "llc.nbeta"),
        ("train: {seeds: [true]}", "train.seeds"),
        ("task: 5", "task"),
        ("device: 5", "device"),
        ("llc: {checkpoints: yes}", "llc.checkpoints"),
    ],
)
def test_wrong_yaml_types_are_one_line(tmp_path, run_cli, yaml_text, needle):
    (tmp_path / "c.yaml").write_text(yaml_text + "\n")
    refused(["train", "--config", "c.yaml", "--out", "runs"], tmp_path, run_cli, needle)
    assert not (tmp_path / "runs").exists()


def test_checkpoint_epochs_checked_before_training(tmp_path, run_cli):
    line = refused(
        ["run", *TINY_FLAGS, "--checkpoints", "0,30", "--out", "runs"],
        tmp_path,
        run_cli,
        "llc.checkpoints",
        "30",
    )
    assert "checkpoint_every=20" in line and not (tmp_path / "runs").exists()
    assert build_config({}, {"llc.checkpoints": "0, 100,2500"}).llc.checkpoints == "0,100,2500"


def test_sweep_checkpoints_checked_before_training(tmp_path, run_cli):
    (tmp_path / "s.yaml").write_text(
        "base: {task: {p: 11, frac: 0.5}, model: {width: 8}, "
        "train: {epochs: 40, checkpoint_every: 20, batch_size: 16}}\n"
        "grid: {train.lr: [0.001, 0.003]}\nllc: {checkpoints: '20,75', chains: 1}\n"
    )
    refused(["sweep", "s.yaml", "--out", "runs"], tmp_path, run_cli, "75")
    assert not (tmp_path / "runs").exists()


def test_sizes_beyond_the_machine_are_refused_with_the_estimate(tmp_path, run_cli):
    line = refused(["train", "--p", "100003", "--out", "runs"], tmp_path, run_cli, "memory")
    assert "task.p=100003" in line and "PiB" in line and not (tmp_path / "runs").exists()
    line = refused(
        ["run", *TINY_FLAGS, "--chains", "100000000", "--out", "runs"],
        tmp_path,
        run_cli,
        "LLC sampling",
        "memory",
    )
    assert not (tmp_path / "runs").exists()


def test_sweep_sizes_checked_before_any_group_trains(tmp_path, run_cli):
    (tmp_path / "s.yaml").write_text(
        "base: {task: {frac: 0.5}, model: {width: 8}, "
        "train: {epochs: 20, checkpoint_every: 20, batch_size: 16}}\n"
        "grid: {task.p: [11, 100003]}\nllc: false\n"
    )
    refused(["sweep", "s.yaml", "--out", "runs"], tmp_path, run_cli, "100003", "memory")
    assert not (tmp_path / "runs").exists()  # the small p=11 group did not train first


@pytest.mark.parametrize("p", ["21", "2", "1", "-7"])
def test_theory_takes_the_same_p_as_train(tmp_path, run_cli, p):
    a = refused(["theory", "--p", p, "--width", "4"], tmp_path, run_cli, "--p")
    b = refused(["train", "--p", p, "--out", "r"], tmp_path, run_cli, "task.p")
    assert a.split("--p: ")[1] == b.split("task.p: ")[1]


@pytest.mark.parametrize(
    "device,needle",
    [
        ("tpu", "device: 'tpu'"),
        ("cuda:99" if torch.cuda.is_available() else "cuda", "device: 'cuda"),
    ],
)
def test_llc_device_is_named_not_the_checkpoint(tmp_path, tiny_cfg, run_cli, device, needle):
    run = train(tiny_cfg(), tmp_path, progress=False).run
    line = refused(["llc", str(run.path), "--device", device], tmp_path, run_cli, needle)
    assert "safetensors" not in line and not run.llc.exists()


# ------------------------------------------------------------------ the file system


def test_out_that_is_a_file(tmp_path, run_cli):
    (tmp_path / "f").write_text("x")
    refused(["train", *TINY_FLAGS, "--out", "f"], tmp_path, run_cli, "--out", "file")
    refused(["run", *TINY_FLAGS, "--out", "f/sub"], tmp_path, run_cli, "--out")
    assert (tmp_path / "f").read_text() == "x"


def test_corrupt_theory_json_is_one_line(tmp_path, tiny_cfg, run_cli):
    run = run_pipeline(
        tiny_cfg(llc__chains=1, llc__draws=5, llc__burnin=0, llc__batch_size=16), tmp_path, False
    ).run
    theory = run.path / "theory.json"
    theory.write_text('{"key": "abc", "closed_form": [')
    refused(["report", str(run.path)], tmp_path, run_cli, "theory.json", "delete it")


def _unprivileged() -> None:
    """Run the child without root's permission override (CAP_DAC_*), so chmod binds it too."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


CASES_SCRIPT = """
import contextlib, io, json, sys
from grokbasin.cli import main
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    sys.argv = ["grokbasin", *args]
    with contextlib.redirect_stderr(err):
        try:
            main()
            rc = 0
        except SystemExit as e:
            rc = e.code
    out.append([rc, err.getvalue()])
print(json.dumps(out))
"""


def _run_unprivileged(cases: list[list[str]], cwd: Path) -> list[tuple[int, str]]:
    """Each case through cli.main in ONE child process without root's permission override."""
    res = subprocess.run(
        [sys.executable, "-c", CASES_SCRIPT, json.dumps(cases)],
        cwd=cwd,
        capture_output=True,
        text=True,
        preexec_fn=_unprivileged,
    )
    assert res.returncode == 0, res.stderr
    return [tuple(x) for x in json.loads(res.stdout.strip().splitlines()[-1])]


@pytest.fixture
def read_only(tmp_path, tiny_cfg):
    """A finished run with LLC rows, plus an empty folder; both made read-only."""
    run = run_pipeline(
        tiny_cfg(llc__chains=1, llc__draws=5, llc__burnin=0, llc__batch_size=16),
        tmp_path / "runs",
        False,
    ).run
    (tmp_path / "empty").mkdir()
    paths = [tmp_path / "empty", *run.path.rglob("*"), run.path, tmp_path / "runs"]
    for p in paths:
        p.chmod(p.stat().st_mode & ~0o222)
    yield run
    for p in paths:
        p.chmod(p.stat().st_mode | 0o200)


def test_read_only_out_and_run_directory(tmp_path, read_only):
    run, before = read_only, tree(read_only.path)
    cases = [
        (["train", *TINY_FLAGS, "--out", "empty", "--quiet"], "--out"),
        (["train", *TINY_FLAGS, "--out", "empty/sub", "--quiet"], "not writable"),
        (["llc", str(run.path), *LLC_FLAGS, "--nbeta", "7", "--quiet"], "not writable"),
        (["report", str(run.path)], "not writable"),
    ]
    results = _run_unprivileged([args for args, _ in cases], tmp_path)
    for (args, needle), (rc, err) in zip(cases, results, strict=True):
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (args, rc, err)
        assert needle in lines[0], lines[0]
    assert not list((tmp_path / "empty").iterdir()) and tree(run.path) == before


# ------------------------------------------------------------------ read-only SQL


@pytest.fixture
def two_runs(tmp_path, tiny_cfg):
    return tmp_path, [
        train(tiny_cfg(train__seeds=[s]), tmp_path, progress=False).run for s in (0, 1)
    ]


def test_sql_cannot_write_or_read_files(two_runs):
    root, runs = two_runs
    before = {r.path.name: tree(r.path) for r in runs}
    target = runs[0].metrics
    hostile = [
        f"COPY (SELECT 1 AS epoch) TO '{target}' (FORMAT parquet)",
        f"COPY metrics TO '{root / 'leak.csv'}'",
        f"ATTACH '{runs[0].path / 'x.duckdb'}' AS x",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('{target}')",
        "SELECT * FROM glob('/*')",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "LOAD httpfs",
        f"EXPORT DATABASE '{root / 'dump'}'",
        "SELECT 1; COPY (SELECT 1) TO 'x.csv'",
        "CREATE TABLE t AS SELECT 1",
    ]
    for sql in hostile:
        with pytest.raises(GrokbasinError) as e:
            query(root, sql)
        assert "\n" not in str(e.value)
    assert {r.path.name: tree(r.path) for r in runs} == before
    assert sorted(p.name for p in root.iterdir()) == sorted(r.path.name for r in runs)
    # ordinary read queries still work, WITH and DESCRIBE included
    assert query(root, "WITH m AS (SELECT * FROM metrics) SELECT count(*) FROM m")[1] == [(8,)]
    assert query(root, "DESCRIBE runs")[1]


def test_sql_refusal_from_the_command_line(two_runs, run_cli):
    root, runs = two_runs
    sql = f"COPY (SELECT 1) TO '{runs[0].metrics}'"
    refused(["runs", "--out", str(root), "--sql", sql], root, run_cli, "COPY")
    read_parquet(runs[0].metrics)  # intact


@pytest.mark.parametrize(
    "breakage",
    ["config_types", "config_not_mapping", "metrics_types", "provenance", "metrics_garbage"],
)
def test_a_broken_run_does_not_hide_the_others(two_runs, breakage):
    root, runs = two_runs
    bad = runs[1]
    if breakage == "config_types":
        bad.config.write_text(bad.config.read_text().replace("p: 11", "p: eleven"))
    elif breakage == "config_not_mapping":
        bad.config.write_text("task: [1, 2]\n")
    elif breakage == "metrics_types":
        from grokbasin.store.rundir import write_parquet

        write_parquet(bad.metrics, [{"epoch": "zero", "val_acc": "high", "replica": "r"}])
    elif breakage == "provenance":
        bad.provenance.write_text("{not json")
    else:
        bad.metrics.write_bytes(b"PAR1 garbage PAR1")
    with pytest.warns(StoreWarning, match=bad.path.name):
        cols, rows = list_runs(root)
    names = [r[cols.index("run")] for r in rows]
    assert runs[0].path.name in names
    good = dict(zip(cols, rows[names.index(runs[0].path.name)], strict=True))
    assert good["val_acc"] is not None and good["status"] == "finished"


# ------------------------------------------------------------------ divergence


def test_divergence_is_recorded_and_reported(tmp_path, tiny_cfg):
    cfg = tiny_cfg(
        train__optimizer="sgd",
        train__lr=[1000.0],
        llc__chains=1,
        llc__draws=5,
        llc__checkpoints="0,40",  # 40 is never written: training stops when all replicas diverge
    )
    summary = run_pipeline(cfg, tmp_path, progress=False)
    run = summary.run
    rows = read_parquet(run.metrics).to_pylist()
    assert rows[0]["diverged"] is False and rows[-1]["diverged"] is True
    assert math.isnan(rows[-1]["train_loss"])
    prov = run.read_provenance()
    assert prov["diverged"] == {"0": rows[-1]["epoch"]} and prov["finished"]
    assert prov["final_epoch"] < 60  # a run whose replicas all diverged stops there
    assert summary.metrics[0]["regime"] == "diverged"
    assert any("diverged" in h for h in summary.health)
    assert summary.theory.get("diverged") and "laplace" not in summary.theory
    assert [r["epoch"] for r in summary.llc] == [0]
    assert "diverged" in run.report.read_text()
    cols, listed = list_runs(tmp_path)
    assert listed[0][cols.index("status")] == "diverged"


def test_divergence_on_the_command_line(tmp_path, run_cli):
    args = ["train", *TINY_FLAGS, "--optimizer", "sgd", "--lr", "1000", "--out", "runs"]
    rc, out, err = run_cli([*args, "--json", "--quiet"], tmp_path)
    assert rc == 0 and json.loads(out)["diverged"] == {"0": 20}
    rc, out, err = run_cli([*args, "--quiet"], tmp_path)
    assert rc == 0 and "replica 0 diverged" in err and "epoch 20" in err


def test_partial_divergence_keeps_training_the_rest(tmp_path, tiny_cfg):
    res = train(tiny_cfg(train__optimizer="sgd", train__lr=[1e-2, 1000.0]), tmp_path, False)
    assert res.diverged == {1: 20} and res.final_epoch == 60
    rows = read_parquet(res.run.metrics).to_pylist()
    assert all(math.isfinite(r["train_loss"]) for r in rows if r["replica"] == 0)

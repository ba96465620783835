"""`grokbasin run` end to end on a tiny config, plus the llc/runs/report commands around it."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from grokbasin.config import build_config
from grokbasin.pipeline import run
from grokbasin.store import connect

TINY_RUN = {
    "task": {"p": 11, "frac": 0.5},
    "model": {"width": 16},
    "train": {"epochs": 40, "checkpoint_every": 20, "batch_size": 16, "lr": [3e-3]},
    "llc": {
        "chains": 2,
        "burnin": 10,
        "draws": 20,
        "batch_size": 16,
        "step_size": 1e-4,
        "gamma": 10.0,
        "nbeta": 20.0,
    },
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = build_config(TINY_RUN)
    return root, cfg, run(cfg, root, progress=False)


def test_run_produces_every_artifact(finished):
    root, cfg, summary = finished
    rd = summary.run
    for path in (
        rd.config,
        rd.metrics,
        rd.llc,
        rd.report,
        rd.path / "report.md",
        rd.path / "theory.json",
    ):
        assert path.exists(), path
    assert all(
        p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in summary.figures.values()
    )
    html = rd.report.read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    rows = pq.read_table(rd.llc).to_pylist()
    assert {r["epoch"] for r in rows} == {0, 20, 40}
    assert {r["chain"] for r in rows} == {0, 1}
    assert len(summary.llc) == 3  # one summary row per checkpoint
    theory = summary.theory
    # closed form K(3p-1)/2 for K=16, p=11; numeric rank(J_c)/2 <= p(N-1)/2
    unified = [r for r in theory["closed_form"] if r["name"].startswith("unified")][0]
    assert unified["value"] == 16 * (3 * 11 - 1) / 2
    assert 0 < theory["numeric"]["llc_train"] <= 11 * (cfg.task.n_train - 1) / 2
    assert 0 < theory["laplace"]["value"] < theory["numeric"]["llc_train"]


def test_second_run_does_no_work(finished):
    root, cfg, first = finished
    before = {p: p.stat().st_mtime_ns for p in (first.run.checkpoints.iterdir())}
    before[first.run.llc] = first.run.llc.stat().st_mtime_ns
    again = run(cfg, root, progress=False)
    assert again.statuses["train"] == "cached"
    assert again.statuses["llc"].startswith("0 checkpoints sampled")
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after


def test_results_store_answers_sql(finished):
    root, cfg, summary = finished
    con = connect(root)
    n = con.execute("SELECT count(*) FROM llc").fetchone()[0]
    assert n == 3 * 2  # checkpoints x chains
    p = con.execute("SELECT task.p FROM runs").fetchone()[0]
    assert p == 11


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "grokbasin", *args], capture_output=True, text=True, cwd=cwd
    )


def test_cli_llc_new_sampler_setting_adds_rows_and_report(finished, tmp_path):
    root, cfg, summary = finished
    res = _cli(
        "llc",
        str(summary.run.path),
        "--checkpoints",
        "last",
        "--chains",
        "2",
        "--draws",
        "10",
        "--burnin",
        "5",
        "--llc-batch-size",
        "16",
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    rows = pq.read_table(summary.run.llc).to_pylist()
    assert len({r["sampler_hash"] for r in rows}) == 2
    assert res.stdout.strip().splitlines()[-1] == str(summary.run.path)
    # a bare re-run continues with the newest sampler settings (at every checkpoint): it fills
    # in the two checkpoints the --checkpoints last call skipped, then has nothing left to do
    res = _cli("llc", str(summary.run.path), "--quiet", cwd=tmp_path)
    assert res.returncode == 0 and "2 checkpoints sampled, 1 already" in res.stderr, res.stderr
    res = _cli("llc", str(summary.run.path), "--quiet", cwd=tmp_path)
    assert res.returncode == 0 and "0 checkpoints sampled, 3 already" in res.stderr, res.stderr
    hashes = {r["sampler_hash"] for r in pq.read_table(summary.run.llc).to_pylist()}
    assert hashes == {r["sampler_hash"] for r in rows}  # no third sampler setting appeared
    res = _cli("report", str(summary.run.path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = _cli("runs", "--out", str(root), "--json", cwd=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)[0]["run"] == summary.run.path.name


def test_cli_commands_reject_bad_input(tmp_path):
    for args, needle in [
        (["llc", str(tmp_path)], "not a run directory"),
        (["llc", "calibrate"], "run directory"),
        (["runs", "--out", str(tmp_path), "--sql", "SELECT nope"], "SQL error"),
        (["report", str(tmp_path)], "neither a run directory"),
        (["run", "--preset", "nope"], "preset"),
        (["run", "--nbeta", "hot"], "llc.nbeta"),
        (["run", "--step-size", "-1"], "llc.step_size"),
        (["theory", "--p", "5", "--width", "0"], "width"),
        (["experiment", "nope"], "nope"),
    ]:
        res = _cli(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    assert list(tmp_path.iterdir()) == []


def test_preset_runs_without_device_flag_and_llc_reuses_its_sampler(tmp_path):
    """paper-fig3 says device: auto (CPU here), and its run directory records the preset's
    sampler, so a bare `grokbasin llc` after llc.parquet is gone samples with it again."""
    import yaml

    from grokbasin.device import resolve
    from grokbasin.presets import PRESETS, preset

    assert all(PRESETS[n][1]["device"] == "auto" for n in ("paper-fig3", "paper-baseline"))
    if not torch_cuda():
        assert resolve("auto") == "cpu"
    tiny = ["--p", "7", "--width", "8", "--epochs", "20", "--checkpoint-every", "10"]
    tiny += ["--batch-size", "8", "--chains", "1", "--draws", "5", "--burnin", "2"]
    tiny += ["--llc-batch-size", "8", "--out", str(tmp_path / "runs"), "--quiet"]
    res = _cli("run", "--preset", "paper-fig3", *tiny, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "runs" / res.stdout.strip().splitlines()[-1].split("/")[-1]
    want = {**preset("paper-fig3")["llc"], "batch_size": 8, "chains": 1, "draws": 5, "burnin": 2}
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["llc"]
    assert {k: recorded[k] for k in want} == want  # the preset's sampler, not the default
    first = pq.read_table(run_dir / "llc.parquet").to_pylist()
    (run_dir / "llc.parquet").unlink()
    res = _cli("llc", str(run_dir), "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    again = pq.read_table(run_dir / "llc.parquet").to_pylist()
    assert {r["sampler_hash"] for r in again} == {r["sampler_hash"] for r in first}
    assert json.loads(again[0]["sampler_config"])["step_size"] == 5e-4
    assert [r["llc"] for r in again] == [r["llc"] for r in first]  # same sampler, same draws


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()

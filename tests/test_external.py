"""External runs: your own model + checkpoints -> one batched LLC trajectory, run dir, CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from grokbasin.device import intra_op_threads
from grokbasin.errors import ConfigError
from grokbasin.llc import trajectory
from grokbasin.llc.external import calibrate, is_external
from grokbasin.store import db
from grokbasin.store.rundir import read_parquet, write_parquet

SAMPLER = {"chains": 2, "draws": 20, "burnin": 10, "step_size": 1e-3, "batch_size": 16}
FLAGS = ["--chains", "2", "--draws", "20", "--burnin", "10", "--step-size", "1e-3"]
MODEL_PY = """
import torch
def make():
    return torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
def wide():
    return torch.nn.Sequential(torch.nn.Linear(3, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))
def half_mse(pred, y):
    return 0.5 * ((pred - y) ** 2).mean()
"""


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))


@pytest.fixture
def saved(tmp_path):
    """model.py, data.pt and 4 checkpoints step_<k>.pt of a tiny MLP trained with plain SGD."""
    torch.manual_seed(0)
    net, X = _net(), torch.randn(64, 3)
    Y = torch.sin(X.sum(1, keepdim=True))
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL_PY))
    torch.save({"X": X, "Y": Y}, tmp_path / "data.pt")
    (tmp_path / "ck").mkdir()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sds = []
    for step in range(1, 41):
        opt.zero_grad()
        F.mse_loss(net(X), Y).backward()
        opt.step()
        if step % 10 == 0:
            sds.append({k: v.clone() for k, v in net.state_dict().items()})
            torch.save(sds[-1], tmp_path / "ck" / f"step_{step}.pt")
    return tmp_path, X, Y, sds


def _llc(table) -> np.ndarray:
    return np.array(table.column("llc").to_pylist())


def test_trajectory_from_python_objects(saved):
    _, X, Y, sds = saved
    res = trajectory(_net(), sds, F.mse_loss, (X, Y), **SAMPLER)
    rows = res.to_pylist()
    assert len(rows) == 4 * 2 and res.run_dir is None and res.computed == [0, 1, 2, 3]
    assert {r["epoch"] for r in rows} == {0, 1, 2, 3} and {r["chain"] for r in rows} == {0, 1}
    assert np.isfinite(_llc(res.table)).all()
    assert {"rhat", "ess", "flags", "sampler_hash", "llc_regressed"} <= set(res.table.column_names)
    # the same inputs as a Dataset and as a DataLoader (its batch size becomes the SGLD batch)
    ds = trajectory(_net(), sds, F.mse_loss, TensorDataset(X, Y), **SAMPLER)
    np.testing.assert_allclose(_llc(ds.table), _llc(res.table), rtol=1e-6)
    dl = trajectory(
        _net(), sds, F.mse_loss, DataLoader(TensorDataset(X, Y), batch_size=16), chains=2,
        draws=20, burnin=10, step_size=1e-3,
    )  # fmt: skip
    np.testing.assert_allclose(_llc(dl.table), _llc(res.table), rtol=1e-6)


def test_one_and_two_cpu_workers_agree(saved):
    _, X, Y, sds = saved
    with intra_op_threads("cpu", 1):
        one = trajectory(_net(), sds, F.mse_loss, (X, Y), **SAMPLER)
    with intra_op_threads("cpu", 2):
        assert torch.get_num_threads() == 2
        two = trajectory(_net(), sds, F.mse_loss, (X, Y), **SAMPLER)
    np.testing.assert_allclose(_llc(two.table), _llc(one.table), rtol=1e-6)


def test_too_large_data_is_refused_with_its_size(saved):
    _, X, Y, sds = saved
    with pytest.raises(ConfigError, match=r"64 samples × 16 bytes.*GiB"):
        trajectory(_net(), sds, F.mse_loss, TensorDataset(X, Y), max_bytes=100, **SAMPLER)


def test_run_dir_resume_rerun_and_database(saved):
    tmp, *_ = saved
    args = ("model.py:make", str(tmp / "ck"), "mse", str(tmp / "data.pt"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        full = trajectory(*args, out=tmp / "runs", **SAMPLER)
        run = full.run_dir
        assert full.computed == [10, 20, 30, 40] and is_external(run)
        for f in ("llc.parquet", "metrics.parquet", "figures/trajectory.png", "report.html"):
            assert (run / f).is_file(), f
        before = (run / "llc.parquet").stat().st_mtime_ns
        again = trajectory(*args, out=tmp / "runs", **SAMPLER)
        assert again.computed == [] and again.cached == [10, 20, 30, 40]
        assert (run / "llc.parquet").stat().st_mtime_ns == before  # no work, nothing rewritten
        np.testing.assert_array_equal(_llc(again.table), _llc(full.table))
        # a run killed after two checkpoints' rows: the rerun samples only the missing ones, and
        # they equal the uninterrupted run's (each chain's stream depends on its step only)
        keep = [r for r in read_parquet(run / "llc.parquet").to_pylist() if r["epoch"] <= 20]
        write_parquet(run / "llc.parquet", keep)
        resumed = trajectory(*args, out=tmp / "runs", **SAMPLER)
        assert resumed.computed == [30, 40] and resumed.cached == [10, 20]
        np.testing.assert_allclose(_llc(resumed.table), _llc(full.table), rtol=1e-6)
    cols, rows = db.query(tmp / "runs", "SELECT run, count(*), min(epoch) FROM llc GROUP BY run")
    assert rows == [(run.name, 8, 10)]
    cols, rows = db.list_runs(tmp / "runs")
    listed = dict(zip(cols, rows[0], strict=True))
    assert listed["run"] == run.name and listed["status"] == "finished"
    assert listed["model"] == "Sequential" and listed["epoch"] == 40


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from grokbasin import cli

    monkeypatch.setattr(sys, "argv", ["grokbasin", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_external_estimate_calibrate_report(saved, monkeypatch, capsys):
    tmp, *_ = saved
    monkeypatch.chdir(tmp)
    base = ["--model", "model.py:make", "--data", "data.pt", "--out", "runs", "--quiet"]
    code, out, err = _main(
        monkeypatch, capsys, "llc", "external", "--checkpoints", "ck/*.pt", "--loss",
        "model.py:half_mse", *base, *FLAGS, "--json",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    run = Path(res["run_dir"])
    assert res["computed"] == [10, 20, 30, 40] and len(res["llc"]) == 4
    code, out, err = _main(monkeypatch, capsys, "llc", str(run), "--step-size", "2e-3", "--quiet")
    assert code == 0 and "4 checkpoints sampled, 0 already" in err, err
    said = " ".join(err.split())  # 2 chains × 20 draws: too few effective draws, said once
    assert said.count("ESS < 100") == 1 and f"`grokbasin llc estimate {run} --draws" in said
    code, out, err = _main(monkeypatch, capsys, "llc", "estimate", str(run), "--quiet")
    assert code == 0 and "0 checkpoints sampled, 4 already" in err, err
    rows = pq.read_table(run / "llc.parquet").to_pylist()
    assert len({r["sampler_hash"] for r in rows}) == 2 and len(rows) == 2 * 4 * 2
    code, out, err = _main(
        monkeypatch, capsys, "llc", "calibrate", str(run), "--step-sizes", "1e-3,1e-2",
        "--gammas", "10", "--epoch", "20", "--chains", "4", "--draws", "200", "--burnin", "200",
        "--quiet",
    )  # fmt: skip
    assert code == 0 and "recommend ε=" in err and "no Laplace" in err, err
    table = Path(out.strip().splitlines()[0])
    assert table.parent == run / "calibration" and table.name.startswith("calibration_e20_r0")
    assert {r["step_size"] for r in pq.read_table(table).to_pylist()} == {1e-3, 1e-2}
    code, out, _ = _main(monkeypatch, capsys, "report", str(run))
    assert code == 0 and out.strip() == str(run / "report.html")


def test_python_calibrate_on_a_state_dict(saved):
    _, X, Y, sds = saved
    cal = calibrate(_net(), sds[-1], F.mse_loss, (X, Y), [1e-4, 1e-2], [10.0], nbetas=[20.0],
                    chains=2, draws=20, burnin=10, batch_size=16)  # fmt: skip
    assert len(cal.rows) == 2 and cal.recommended[20.0] is not None
    assert all(np.isfinite(r["llc_mean"]) for r in cal.rows)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"--model": "nope.py:make"}, "--model: nope.py: no such file"),
        ({"--model": "model.py:missing"}, "no callable 'missing'"),
        ({"--model": "model.py:wide"}, "'0.weight' has shape (6, 3), the model's is (7, 3)"),
        ({"--checkpoints": "ck/*.safetensors"}, "--checkpoints: no files match"),
        ({"--loss": "hinge"}, "--loss: got 'hinge'; use mse, cross_entropy or FILE.py:fn"),
        ({"--data": "nan.pt"}, "X has 1 non-finite values"),
        ({"--checkpoints": "other/*.pt"}, "keys do not match the model: missing ['2.bias'"),
    ],
)
def test_cli_external_rejects_bad_input(saved, monkeypatch, capsys, change, needle):
    tmp, X, Y, sds = saved
    monkeypatch.chdir(tmp)
    X = X.clone()
    X[3, 1] = float("nan")
    torch.save({"X": X, "Y": Y}, tmp / "nan.pt")
    (tmp / "other").mkdir()
    torch.save({k: v for k, v in sds[0].items() if k != "2.bias"}, tmp / "other" / "step_1.pt")
    args = {
        "--model": "model.py:make",
        "--checkpoints": "ck/*.pt",
        "--data": "data.pt",
        "--loss": "mse",
        **change,
    }
    flat = [s for kv in args.items() for s in kv]
    code, out, err = _main(monkeypatch, capsys, "llc", "external", *flat, "--out", "runs")
    assert code == 2, (code, err)
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp / "runs").exists()  # nothing written


def test_llc_group_and_mixed_store(saved, monkeypatch, capsys, tiny_cfg):
    """`llc` lists its sub-commands; external and built-in runs share one `runs` listing."""
    tmp, X, Y, sds = saved
    code, out, _ = _main(monkeypatch, capsys, "llc", "--help")
    assert code == 0 and all(c in out for c in ("estimate", "calibrate", "external"))
    code, _, err = _main(monkeypatch, capsys, "llc", "estimate", str(tmp / "ck"))
    assert code == 2 and "not a run directory" in err
    from grokbasin.train.runner import train

    train(tiny_cfg(train__epochs=20), tmp / "runs", progress=False)
    ext = trajectory(_net(), sds, F.mse_loss, (X, Y), out=tmp / "runs", **SAMPLER)
    cols, rows = db.list_runs(tmp / "runs")
    models = {r[cols.index("run")]: r[cols.index("model")] for r in rows}
    assert len(models) == 2 and models[ext.run_dir.name] == "Sequential"
    assert "quadratic" in models.values()
    _, n = db.query(tmp / "runs", "SELECT count(*) FROM llc")
    assert n == [(8,)]


def test_cli_marker_matches_the_external_spec_file():
    from grokbasin.cli_llc import EXTERNAL_SPEC
    from grokbasin.llc.external.core import SPEC_FILE

    assert EXTERNAL_SPEC == SPEC_FILE


def test_checkpoints_ordered_by_the_number_in_their_name(saved):
    from grokbasin.llc.external.inputs import resolve_checkpoints

    tmp, _, _, sds = saved
    d = tmp / "numbered"
    d.mkdir()
    for step, sd in zip((100, 5, 40), sds, strict=False):
        torch.save(sd, d / f"run3_step_{step}.pt")
    steps, labels, got, _ = resolve_checkpoints(str(d), None)
    assert steps == [5, 40, 100] and labels[0] == "run3_step_5.pt"
    torch.testing.assert_close(got[0]["0.weight"], sds[1]["0.weight"])
    (d / "final.pt").write_bytes((d / "run3_step_5.pt").read_bytes())
    with pytest.raises(ConfigError, match="final.pt has no number in its name"):
        resolve_checkpoints(str(d), None)


def test_temperature_sweep_gives_regressed_estimates(saved):
    _, X, Y, sds = saved
    res = trajectory(_net(), sds[-1:], F.mse_loss, (X, Y), nbetas=[40.0, 5.0], **SAMPLER)
    rows = res.to_pylist()
    assert sorted({r["nbeta"] for r in rows}) == [5.0, pytest.approx(16 / np.log(16)), 40.0]
    assert all(np.isfinite(r["llc_regressed"]) for r in rows)
    (main,) = res.summary()  # the main nβ only, although 5.0 sorts first
    assert main["chains"] == 2 and main["nbeta"] == pytest.approx(16 / np.log(16))


def test_external_run_records_norms_for_the_dashboard(saved):
    tmp, _, _, _ = saved
    args = (str(tmp / "model.py") + ":make", str(tmp / "ck" / "*.pt"), "mse", tmp / "data.pt")
    res = trajectory(*args, out=tmp / "runs", record_norms=True, mala=True, **SAMPLER)
    shash = read_parquet(res.run_dir / "llc.parquet").column("sampler_hash")[0].as_py()
    from grokbasin.llc.health_traces import read_health
    from grokbasin.store.rundir import RunDir

    health, meta = read_health(RunDir(res.run_dir), shash)
    assert sorted(health) == [10, 20, 30, 40] and len(meta["steps"]) == 10 + 20
    assert health[40]["noise"].shape == (1, 1, 2, 30)
    html = (res.run_dir / "report.html").read_text()
    assert (
        "Sampler dashboard" in html and "MALA acceptance" in html and "--record-norms" not in html
    )

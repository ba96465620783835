"""Sweeps: expansion, batched groups, reuse of finished work, resume after SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from grokbasin.errors import ConfigError
from grokbasin.experiments import sweep as sw
from grokbasin.store.rundir import RunDir, read_parquet, write_parquet

BASE = {
    "task": {"p": 11, "frac": 0.5},
    "model": {"width": 16},
    "train": {"epochs": 40, "checkpoint_every": 20, "batch_size": 32, "lr": [3e-3]},
}


def _fake_estimate(calls: list):
    """Stands in for llc.trajectory.estimate_runs: one row per selected epoch, appended."""

    def estimate(run_dirs, llc_cfg, device="cpu", progress=True):
        calls.append((sorted(str(d) for d in run_dirs), llc_cfg.sampler_hash()))
        for d in run_dirs:
            run = RunDir(d)
            old = read_parquet(run.llc).to_pylist() if run.llc.exists() else []
            new = [
                {
                    "epoch": e,
                    "replica": 0,
                    "chain": 0,
                    "nbeta": 1.0,
                    "llc": float(e) * llc_cfg.gamma,
                    "sampler_hash": llc_cfg.sampler_hash(),
                }
                for e in sw.selected_epochs(run, llc_cfg)
            ]
            write_parquet(run.llc, old + new)

    return estimate


@pytest.fixture
def fake_llc(monkeypatch):
    calls: list = []
    monkeypatch.setattr(sw, "_estimator", lambda: _fake_estimate(calls))
    return calls


def test_expand_makes_one_single_replica_config_per_cell_point_seed():
    s = sw.sweep_from_dict(
        {
            "base": BASE,
            "grid": {"model.width": [8, 16], "train.lr": [1e-3, 3e-3]},
            "points": [{"task.p": 11}, {"task.p": 13}],
            "seeds": [0, 1, 2],
        }
    )
    cfgs = sw.expand(s)
    assert len(cfgs) == 2 * 2 * 2 * 3 and len({c.run_hash() for c in cfgs}) == 24
    assert all(len(c.train.replicas()) == 1 for c in cfgs)
    # groups differ only in p and width: 4 groups of (2 lr x 3 seeds)
    assert sorted(len(g) for g in sw.group(cfgs)) == [6, 6, 6, 6]
    assert not s.estimate and sw.sweep_from_dict({"base": BASE, "llc": {"draws": 5}}).estimate


def test_bad_sweeps_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        sw.sweep_from_dict({"base": BASE, "grd": {}})
    with pytest.raises(ConfigError, match="non-empty lists"):
        sw.sweep_from_dict({"grid": {"train.lr": 1e-3}})
    with pytest.raises(ConfigError, match="task.p"):
        sw.expand(sw.sweep_from_dict({"base": BASE, "grid": {"task.p": [11, 12]}}))
    f = tmp_path / "s.yaml"
    f.write_text(
        "base: {task: {p: 11}, train: {batch_size: 0}}\n"
        "grid: {train.lr: [0.001, 0.003]}\nseeds: [0, 1]\n"
    )
    assert len(sw.expand(sw.load_sweep(f))) == 4


def test_second_invocation_does_no_new_training_or_sampling(tmp_path, fake_llc):
    spec = {
        "base": BASE,
        "grid": {"train.lr": [1e-3, 3e-3]},
        "seeds": [0, 1],
        "llc": {"chains": 1, "draws": 5, "checkpoints": "all"},
    }
    first = sw.run_sweep(sw.sweep_from_dict(spec), tmp_path, progress=False)
    assert (first.trained, first.sampled) == (4, 4) and len(fake_llc) == 1  # one batched call
    stamps = {p: p.stat().st_mtime_ns for r in first.runs for p in r.path.rglob("*") if p.is_file()}
    again = sw.run_sweep(sw.sweep_from_dict(spec), tmp_path, progress=False)
    assert again.did_nothing and len(fake_llc) == 1
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing rewritten
    assert {(p.train, p.llc) for p in again.plans} == {("cached", "cached")}


def test_new_seeds_and_sampler_settings_compute_only_what_is_new(tmp_path, fake_llc):
    spec = {"base": BASE, "seeds": [0, 1], "llc": {"draws": 5, "gamma": 1.0}}
    sw.run_sweep(sw.sweep_from_dict(spec), tmp_path, progress=False)
    more = sw.run_sweep(sw.sweep_from_dict({**spec, "seeds": [0, 1, 2]}), tmp_path, progress=False)
    assert (more.trained, more.sampled) == (1, 1)  # only seed 2 trained and sampled
    new_sampler = {**spec, "seeds": [0, 1, 2], "llc": {"draws": 5, "gamma": 2.0}}
    res = sw.run_sweep(sw.sweep_from_dict(new_sampler), tmp_path, progress=False)
    assert (res.trained, res.sampled) == (0, 3)  # training reused, every run sampled once more
    rows = pq.read_table(res.runs[0].llc).to_pylist()
    assert len({r["sampler_hash"] for r in rows}) == 2 and len(rows) == 2 * 3  # 3 checkpoints


def test_sampler_grid_shares_training(tmp_path, fake_llc):
    spec = {"base": BASE, "grid": {"llc.gamma": [1.0, 10.0]}, "llc": {"checkpoints": "last"}}
    res = sw.run_sweep(sw.sweep_from_dict(spec), tmp_path, progress=False)
    assert len(res.runs) == 1 and res.trained == 1 and res.sampled == 2
    rows = pq.read_table(res.runs[0].llc).to_pylist()
    # exact: fake llc = epoch * gamma at the last checkpoint (epoch 40)
    assert sorted(r["llc"] for r in rows) == [40.0, 400.0]


KILLER = textwrap.dedent("""
    import os, signal, sys
    import grokbasin.train.runner as runner
    from grokbasin.experiments import sweep as sw
    real, count = runner.write_parquet, [0]
    def dying(*a, **k):
        real(*a, **k)
        count[0] += 1
        if count[0] == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    runner.write_parquet = dying
    spec = {SPEC}
    sw.run_sweep(sw.sweep_from_dict(spec), sys.argv[1], progress=False)
""")


def test_killed_sweep_rerun_completes_with_the_same_results(tmp_path):
    spec = {"base": BASE, "grid": {"model.width": [8, 16]}, "seeds": [0, 1]}
    script = tmp_path / "killer.py"
    script.write_text(KILLER.replace("{SPEC}", repr(spec)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # metrics are written at each of 3 checkpoints x 2 runs per group: die mid-second group
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "killed"), "9"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9
    half = sw.plan(tmp_path / "killed", sw.expand(sw.sweep_from_dict(spec)), estimate=False)
    assert {p.train for p in half} == {"cached", "resume"}  # one group done, one interrupted
    resumed = sw.run_sweep(sw.sweep_from_dict(spec), tmp_path / "killed", progress=False)
    assert resumed.trained == 2
    clean = sw.run_sweep(sw.sweep_from_dict(spec), tmp_path / "clean", progress=False)
    for a, b in zip(resumed.runs, clean.runs, strict=True):
        assert a.path.name == b.path.name
        ma, mb = read_parquet(a.metrics).to_pylist(), read_parquet(b.metrics).to_pylist()
        # resume replays the same counter-based randomness: equal to 1e-6 (bitwise in practice)
        assert len(ma) == len(mb) == 3
        for ra, rb in zip(ma, mb, strict=True):
            assert ra["epoch"] == rb["epoch"]
            assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-6)
            assert ra["val_acc"] == pytest.approx(rb["val_acc"], abs=1e-6)


def test_process_pool_matches_inline(tmp_path):
    spec = sw.sweep_from_dict({"base": BASE, "grid": {"model.width": [8, 16]}, "seeds": [0]})
    a = sw.run_sweep(spec, tmp_path / "inline", workers=1, progress=False)
    b = sw.run_sweep(spec, tmp_path / "pool", workers=2, progress=False)
    assert a.trained == b.trained == 2
    for x, y in zip(a.runs, b.runs, strict=True):
        # same kernels, one thread or two: equal to 1e-6
        lx = [r["train_loss"] for r in read_parquet(x.metrics).to_pylist()]
        ly = [r["train_loss"] for r in read_parquet(y.metrics).to_pylist()]
        assert lx == pytest.approx(ly, abs=1e-6)


@pytest.mark.slow
def test_ray_backend_gives_the_same_results_as_local(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'grokbasin[ray]')")
    spec = sw.sweep_from_dict({"base": BASE, "grid": {"model.width": [8, 16]}, "seeds": [0]})
    a = sw.run_sweep(spec, tmp_path / "local", progress=False)
    b = sw.run_sweep(spec, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert a.trained == b.trained == 2
    for x, y in zip(a.runs, b.runs, strict=True):
        assert x.path.name == y.path.name
        # same kernels in another process: equal to 1e-6
        lx = [(r["epoch"], r["train_loss"]) for r in read_parquet(x.metrics).to_pylist()]
        ly = [(r["epoch"], r["train_loss"]) for r in read_parquet(y.metrics).to_pylist()]
        assert [e for e, _ in lx] == [e for e, _ in ly]
        assert [v for _, v in lx] == pytest.approx([v for _, v in ly], abs=1e-6)
    assert sw.run_sweep(spec, tmp_path / "ray", backend="ray", progress=False).did_nothing

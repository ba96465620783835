"""LLC trajectories over a trained run's checkpoints: llc.parquet rows, resumption by sampler
hash, traces file, checkpoint selection and divergence tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest

from grokbasin.config import LLCConfig, build_config
from grokbasin.errors import ConfigError
from grokbasin.llc.trajectory import COLUMNS, estimate_runs, select_epochs
from grokbasin.store.rundir import RunDir, read_parquet
from grokbasin.train.runner import train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    cfg = build_config(
        {},
        {
            "task.p": 11,
            "model.width": 16,
            "train.epochs": 60,
            "train.checkpoint_every": 20,
            "train.batch_size": 16,
            "train.seeds": [0, 1],
        },
    )
    return train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run


def _cfg(**kw) -> LLCConfig:
    base = dict(chains=2, burnin=5, draws=20, batch_size=16, step_size=1e-4, gamma=5.0)
    return LLCConfig(**{**base, **kw})


def test_trajectory_writes_resumes_and_adds(run: RunDir) -> None:
    # exact row counts: 4 checkpoints (0, 20, 40, 60) × 2 training replicas × 2 chains × 2 nβ
    cfg = _cfg(nbetas=[30.0])
    out = estimate_runs([run.path], cfg, progress=False)[0]
    assert out.computed == [0, 20, 40, 60] and out.cached == []
    t = read_parquet(run.llc)
    assert set(COLUMNS) <= set(t.column_names)
    assert t.num_rows == 4 * 2 * 2 * 2
    rows = t.to_pylist()
    assert {r["sampler_hash"] for r in rows} == {cfg.sampler_hash()}
    assert {r["replica"] for r in rows} == {0, 1} and {r["chain"] for r in rows} == {0, 1}
    assert all(isinstance(r["flags"], str) for r in rows)
    tfile = Path(run.path) / "llc_traces" / f"{cfg.sampler_hash()}.safetensors"
    traces, _ = run.load_tensors(tfile)
    assert traces["epoch_60"].shape == (2, 2, 2, 20)

    again = estimate_runs([run.path], cfg, progress=False)[0]
    assert again.computed == [] and again.cached == [0, 20, 40, 60]
    assert read_parquet(run.llc).num_rows == 32

    other = _cfg(step_size=5e-5, checkpoints="last")
    added = estimate_runs([run.path], other, progress=False)[0]
    assert added.computed == [60]
    t2 = read_parquet(run.llc).to_pylist()
    assert len(t2) == 32 + 2 * 2  # last checkpoint × 2 replicas × 2 chains, one nβ
    assert {r["sampler_hash"] for r in t2} == {cfg.sampler_hash(), other.sampler_hash()}


def test_checkpoint_selection(run: RunDir) -> None:
    assert select_epochs(run, "last") == [60]
    assert select_epochs(run, "20, 40") == [20, 40]
    with pytest.raises(ConfigError, match="no checkpoint"):
        select_epochs(run, "25")
    with pytest.raises(ConfigError):
        select_epochs(run, "first")


def test_diverging_sampler_flags_instead_of_crashing(run: RunDir) -> None:
    # a step size far past stability: every chain blows up; rows still written, flagged nonfinite
    bad = _cfg(step_size=50.0, nbeta=1e4, checkpoints="last", seed=3)
    estimate_runs([run.path], bad, progress=False)
    rows = [r for r in read_parquet(run.llc).to_pylist() if r["sampler_hash"] == bad.sampler_hash()]
    assert len(rows) == 4
    assert all("nonfinite" in r["flags"] for r in rows)


def test_a_copied_or_renamed_run_re_estimates_to_identical_numbers(run: RunDir, tmp_path) -> None:
    # the chain streams come from the resolved config's hash, not the folder name: a copy named
    # "myrun" (not hex: before, every such folder shared run id 0) gives the very same λ̂
    import shutil

    cfg = _cfg(seed=7, checkpoints="20,60")
    copy = RunDir(tmp_path / "myrun")
    shutil.copytree(run.path, copy.path, ignore=shutil.ignore_patterns("llc*", ".lock"))
    estimate_runs([run.path], cfg, progress=False)
    estimate_runs([copy.path], cfg, progress=False)

    def llc(r: RunDir) -> list[tuple]:
        rows = [
            x for x in read_parquet(r.llc).to_pylist() if x["sampler_hash"] == cfg.sampler_hash()
        ]
        return sorted((x["epoch"], x["replica"], x["chain"], x["llc"]) for x in rows)

    assert llc(copy) == llc(run) and len(llc(run)) == 2 * 2 * 2

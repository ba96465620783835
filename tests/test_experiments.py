"""Named experiments: registry, outputs, fits on a tiny grid with a stand-in LLC estimator."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from grokbasin.errors import ConfigError
from grokbasin.experiments import paper_a
from grokbasin.experiments import sweep as sw
from grokbasin.experiments.registry import get, list_experiments, run_experiment
from grokbasin.store.rundir import RunDir, read_parquet, write_parquet

NAMES = {"llc-vs-p", "llc-vs-width", "trajectory-robustness", "gsm-vs-lr", "gsm-vs-weight-decay",
         "critical-data-size", "sgld-sensitivity"}


def test_registry_lists_every_paper_a_experiment():
    names = {e.name for e in list_experiments()}
    assert NAMES <= names
    assert all(e.description for e in list_experiments())
    with pytest.raises(ConfigError, match="choose one of"):
        get("fig99")
    with pytest.raises(ConfigError, match="--scale"):
        run_experiment("llc-vs-p", scale="huge")


@pytest.fixture
def linear_llc(monkeypatch):
    """Estimator stand-in: LLC = 1.5·K·p exactly, so the fit must recover slope 1.5·K vs p."""

    def estimate(run_dirs, llc_cfg, device="cpu", progress=True):
        for d in run_dirs:
            run = RunDir(d)
            cfg = read_parquet(run.metrics)  # run exists and is trained
            assert cfg.num_rows
            import yaml

            c = yaml.safe_load(run.config.read_text())
            val = 1.5 * c["model"]["width"] * c["task"]["p"]
            old = read_parquet(run.llc).to_pylist() if run.llc.exists() else []
            e = sw.selected_epochs(run, llc_cfg)[-1]
            nb = llc_cfg.resolve_nbeta(int(c["task"]["frac"] * c["task"]["p"] ** 2))
            new = [{"epoch": e, "replica": 0, "chain": ch, "nbeta": nb, "llc": val + ch - 0.5,
                    "sampler_hash": llc_cfg.sampler_hash()} for ch in (0, 1)]
            write_parquet(run.llc, old + new)

    monkeypatch.setattr(sw, "_estimator", lambda: estimate)


def test_llc_scaling_fits_recover_the_slope_and_write_outputs(tmp_path, linear_llc):
    train = {"epochs": 20, "checkpoint_every": 10, "batch_size": 0, "lr": [3e-3]}
    llc = {"chains": 2, "draws": 5, "batch_size": 16, "checkpoints": "last"}
    res = paper_a._llc_scaling("llc-vs-p", "task.p", "model.width", [11, 13, 17], [8, 16],
                               "tiny", tmp_path, "local", 1, "cpu", False, train, llc, 0.5)
    # exact linear data (chain offsets ±0.5 cancel in the mean): slope 1.5·K, R² = 1 to 1e-9
    by_k = {s["width"]: s for s in res.summary}
    assert by_k[8]["slope"] == pytest.approx(12.0, rel=1e-9)
    assert by_k[16]["slope"] == pytest.approx(24.0, rel=1e-9)
    assert by_k[16]["r2"] == pytest.approx(1.0, abs=1e-9)
    assert by_k[8]["theory_slope"] == 12.0
    png = res.figures["llc-vs-p"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Path(res.tables["llc-vs-p"]).open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"p", "width", "llc", "theory_under"} <= set(rows[0])
    assert "<img" in res.report.read_text()
    # a second invocation does no new training or sampling and gives the same summary
    again = paper_a._llc_scaling("llc-vs-p", "task.p", "model.width", [11, 13, 17], [8, 16],
                                 "tiny", tmp_path, "local", 1, "cpu", False, train, llc, 0.5)
    assert again.summary == res.summary
    cfgs = sw.expand(sw.sweep_from_dict({"base": {"task": {"frac": 0.5}, "train": train},
                                         "grid": {"task.p": [11], "model.width": [8]},
                                         "seeds": [0], "llc": llc}))
    assert sw.jobs_for(cfgs, tmp_path, True) == []

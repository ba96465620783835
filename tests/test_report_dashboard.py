"""The sampler dashboard: rank plots, recorded norms and MALA acceptance persisted by the
trajectory (opt-in, hash unchanged when off), and the report section built from a real run."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from grokbasin.config import LLCConfig, build_config
from grokbasin.errors import ConfigError
from grokbasin.llc.health_traces import kept_steps, per_group, read_health
from grokbasin.llc.trajectory import estimate_runs
from grokbasin.report.dashboard import CheckpointHealth, dashboard_section, load, select_detail
from grokbasin.report.health_figures import badness, rank_histograms
from grokbasin.store.query import Want, llc_rows
from grokbasin.store.rundir import RunDir, read_parquet
from grokbasin.train.runner import train

SGLD_DEFAULT_HASH = "34082856ec"  # tests/test_sampler_options.py: recorded before options


def test_rank_histograms_known_answers():
    # chain 0 holds the 10 lowest draws, chain 1 the 10 highest: two bins split them exactly
    x = np.stack([np.arange(10.0), np.arange(10.0, 20.0)])[None]
    assert rank_histograms(x, bins=2).tolist() == [[[10, 0], [0, 10]]]
    # well-mixed iid chains: each of 4 chains × 10 bins holds D/10 = 400 draws, binomial sd ≈ 19
    rng = np.random.default_rng(0)
    h = rank_histograms(rng.standard_normal((3, 4, 4000)), bins=10)
    assert h.shape == (3, 4, 10) and (h.sum(axis=(1, 2)) == 16000).all()
    assert np.abs(h - 400).max() < 5 * 19


def test_average_ranks_match_scipy_and_share_ties():
    from scipy.stats import rankdata

    from grokbasin.report.health_figures import average_ranks

    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal((5, 60)), 1)  # many ties
    np.testing.assert_array_equal(average_ranks(x), rankdata(x, axis=1, method="average"))
    # constant chains: every draw ties, so every chain's rank histogram is the same
    h = rank_histograms(np.ones((1, 3, 8)), bins=4)
    assert (h == h[:, :1]).all() and h.sum() == 24


def test_badness_is_one_at_each_threshold():
    b = badness(np.array([1.1, 1.0]), np.array([100.0, 400.0]), np.array([-0.05, 0.0]))
    np.testing.assert_allclose(b[:, 0], 1.0)
    np.testing.assert_allclose(b[:, 1], [0.0, 0.25, 0.0])


def test_kept_steps_and_group_layout():
    s = kept_steps(1000, 200)
    assert len(s) == 200 and s[0] == 0 and s[-1] == 999 and (np.diff(s) > 0).all()
    assert kept_steps(7, 200).tolist() == list(range(7))
    # replica r = (g·B + b)·C + c must land at [g, b, c]
    G, B, C, S = 2, 3, 4, 5
    norms = {"grad": np.arange(G * B * C)[:, None] * np.ones(S)}
    out, steps = per_group(norms, np.arange(G * B * C) / 100.0, (G, B, C))
    assert steps.tolist() == list(range(S))
    assert out["grad"][1, 2, 3, 0] == (1 * B + 2) * C + 3
    assert out["mala_accept"][1, 0, 2] == pytest.approx(((1 * B + 0) * C + 2) / 100.0)


def test_select_detail_prefers_serious_flags():
    def ck(e: int, flags: list[str]) -> CheckpointHealth:
        return CheckpointHealth(e, 0, 1.0, 1.0, 1.0, 200.0, 0.0, flags, np.zeros(2))

    items = [ck(0, ["low_ess"]), ck(1, []), ck(2, ["nonfinite"]), ck(3, ["rhat", "low_ess"])]
    assert select_detail(items, limit=2) == [2, 3]
    assert select_detail([ck(e, []) for e in range(9)]) == [0, 4, 8]


def test_trace_grid_keeps_every_checkpoint_up_to_its_limit():
    from grokbasin.report.dashboard import grid_items

    items = list(range(100))
    assert grid_items(items[:56]) == list(range(56))
    picked = grid_items(items, limit=10)
    assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 99


def test_record_switches_keep_the_default_hash_and_check_the_sampler():
    assert LLCConfig(record_norms=False, mala=False).sampler_hash() == SGLD_DEFAULT_HASH
    on = {LLCConfig(record_norms=True).sampler_hash(), LLCConfig(mala=True).sampler_hash()}
    assert len(on) == 2 and SGLD_DEFAULT_HASH not in on
    with pytest.raises(ConfigError, match=r"llc.*mala.*sgld"):
        build_config({}, {"llc.mala": True, "llc.method": "sgnht"})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    cfg = build_config(
        {},
        {
            "task.p": 11,
            "model.width": 16,
            "train.epochs": 40,
            "train.checkpoint_every": 20,
            "train.batch_size": 16,
            "train.seeds": [0, 1],
        },
    )
    return train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run


EPS = 1e-4
BASE = dict(chains=2, burnin=5, draws=30, batch_size=16, step_size=EPS, gamma=5.0)


def test_trajectory_persists_norms_and_acceptance(run: RunDir):
    cfg = LLCConfig(**BASE, record_norms=True, mala=True)
    plain = LLCConfig(**BASE)
    estimate_runs([run.path], cfg, progress=False)
    health, meta = read_health(run, cfg.sampler_hash())
    assert sorted(health) == [0, 20, 40] and meta["burnin"] == 5
    steps = 5 + 30  # burn-in + draws, all kept (fewer than MAX_POINTS)
    assert meta["steps"] == list(range(steps))
    h = health[40]
    assert h["distance"].shape == (2, 1, 2, steps) and h["mala_accept"].shape == (2, 1, 2)
    assert (h["distance"][..., 0] == 0).all()  # the first step starts at w*
    # the noise kick is sqrt(ε)·ξ with ξ ~ N(0, I_d): its norm is sqrt(ε·d) to ~1/sqrt(2d)
    d = sum(int(np.prod(v.shape[1:])) for v in run.load_checkpoint(40).values())
    np.testing.assert_allclose(np.median(h["noise"]), math.sqrt(EPS * d), rtol=0.02)
    assert ((h["mala_accept"] >= 0) & (h["mala_accept"] <= 1)).all()
    # recording runs the reference kernel: same estimates to float32 round-off
    estimate_runs([run.path], plain, progress=False)
    rows = read_parquet(run.llc).to_pylist()
    by = {
        s: sorted(
            (r["epoch"], r["replica"], r["chain"], r["llc"]) for r in rows if r["sampler_hash"] == s
        )
        for s in (cfg.sampler_hash(), plain.sampler_hash())
    }
    a, b = (np.array([r[3] for r in by[k]]) for k in by)
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)
    assert not read_health(run, plain.sampler_hash())[0]  # nothing recorded when off


def test_dashboard_section_from_a_run(run: RunDir):
    cfg = LLCConfig(**BASE, record_norms=True, mala=True)
    plain = LLCConfig(**BASE)
    for c in (cfg, plain):
        estimate_runs([run.path], c, progress=False)
    rows = llc_rows([Want(run.path, cfg.sampler_hash(), "any")])[0]
    sec = dashboard_section(run.path, rows, cfg.sampler_hash(), rows[0]["nbeta"], limit=2)
    assert sec is not None and sec.heading == "Sampler dashboard" and not sec.warnings
    (table,) = sec.tables
    assert len(table.rows) == 3 * 2  # every checkpoint × training replica
    cols = set(table.rows[0])
    assert {"R-hat", "ESS", "‖w − w*‖ at end", "noise (median)", "MALA acceptance"} <= cols
    assert all(0 <= r["MALA acceptance"] <= 1 for r in table.rows)
    captions = [f.caption for f in sec.figures]
    assert captions[0] == "Health of all 6 checkpoints"
    assert captions[1] == "Chain traces at all 6 checkpoints"
    assert len(captions) == 4 and all("norms" in c for c in captions[2:])
    assert all(f.data[:4] == b"\x89PNG" for f in sec.figures)
    assert not any("--record-norms" in p for p in sec.paragraphs)

    # each chain's λ̂ in llc.parquet is the mean of its λ̂-scale trace (float32 traces: rtol 1e-4)
    items = load(run, rows, cfg.sampler_hash(), rows[0]["nbeta"])[0]
    for it in items:
        want = sorted(
            (r["chain"], r["llc"])
            for r in rows
            if (r["epoch"], r["replica"]) == (it.epoch, it.replica)
        )
        np.testing.assert_allclose(it.llc.mean(axis=1), [v for _, v in want], rtol=1e-4)

    rows = llc_rows([Want(run.path, plain.sampler_hash(), "any")])[0]
    sec = dashboard_section(run.path, rows, plain.sampler_hash(), rows[0]["nbeta"], limit=1)
    assert sec is not None and "MALA acceptance" not in sec.tables[0].rows[0]
    assert any("--record-norms --mala" in p for p in sec.paragraphs)
    assert dashboard_section(run.path, [], plain.sampler_hash(), 1.0) is None


def test_damaged_traces_file_is_reported_not_fatal(run: RunDir, tmp_path):
    import shutil

    copy = RunDir(shutil.copytree(run.path, tmp_path / run.path.name))
    plain = LLCConfig(**BASE)
    estimate_runs([copy.path], plain, progress=False)
    tfile = copy.path / "llc_traces" / f"{plain.sampler_hash()}.safetensors"
    tfile.write_bytes(tfile.read_bytes()[:-8] + b"garbage!")
    rows = llc_rows([Want(copy.path, plain.sampler_hash(), "any")])[0]
    sec = dashboard_section(copy.path, rows, plain.sampler_hash(), rows[0]["nbeta"])
    assert sec is not None and len(sec.warnings) == 1 and str(tfile) in sec.warnings[0]
    assert len(sec.figures) == 1  # the strip still renders from llc.parquet


def test_cli_estimate_records_and_prints_grouped_advice(run: RunDir, run_cli, tmp_path):
    import shutil

    copy = RunDir(shutil.copytree(run.path, tmp_path / run.path.name))
    flags = ["--chains", "2", "--draws", "20", "--burnin", "2", "--llc-batch-size", "16"]
    rc, out, err = run_cli(
        ["llc", "estimate", str(copy.path), *flags, "--record-norms", "--mala", "--quiet"], tmp_path
    )
    assert rc == 0, err
    cfg = LLCConfig(chains=2, draws=20, burnin=2, batch_size=16, record_norms=True, mala=True)
    health, _ = read_health(copy, cfg.sampler_hash())
    assert sorted(health) == [0, 20, 40]
    text = " ".join((out + err).split())
    # 20 draws after 2 burn-in steps: too few effective draws everywhere, said once, with advice
    assert text.count("ESS < 100") == 1 and "at 6 of 6 checkpoints" in text  # × 2 replicas
    draws = [int(d) for d in re.findall(r"--draws (\d+)", text.split("ESS < 100")[1])]
    assert draws and 40 <= draws[0] <= 200  # 2 to 10 × the 20 draws, by how low the ESS is
    report = copy.report.read_text()
    assert "Sampler dashboard" in report and "MALA acceptance" in report

"""Step-size calibration: grid layout, recommendation rule, one batched end-to-end call."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from grokbasin.config import LLCConfig, build_config, short_hash
from grokbasin.errors import ConfigError
from grokbasin.llc.calibrate import (
    calibrate,
    check_fraction,
    check_samplers,
    consensus_order,
    explain,
    format_recommendation,
    kendall_tau,
    order_check,
    per_replica,
    recommend,
)
from grokbasin.store.rundir import read_parquet
from grokbasin.train.runner import train


def row(eps: float, gam: float, flags: list[str], lap_gap: float = math.nan, nb: float = 10.0):
    healthy = not any(
        f in ("nonfinite", "explosion", "negative", "rhat", "nonstationary") for f in flags
    )
    return {
        "step_size": eps,
        "gamma": gam,
        "nbeta": nb,
        "flags": flags,
        "healthy": healthy,
        "laplace": 1.0,
        "laplace_gap": lap_gap,
        "llc_mean": 1.0,
        "llc_std": 0.1,
    }


def test_per_replica_layout_matches_the_estimator() -> None:
    cells = [(1e-4, 1.0), (1e-3, 5.0)]
    eps, gam = per_replica(cells, nbetas=2, chains=3)
    # replica r = (g·B + b)·C + c: cell g owns the contiguous block [g·B·C, (g+1)·B·C)
    assert eps == [1e-4] * 6 + [1e-3] * 6 and gam == [1.0] * 6 + [5.0] * 6


def test_recommend_takes_largest_healthy_step_then_closest_to_laplace() -> None:
    rows = [
        row(1e-4, 1.0, [], lap_gap=0.5),
        row(1e-3, 1.0, ["low_ess"], lap_gap=0.3),  # low ESS only warns
        row(1e-2, 1.0, ["nonstationary"], lap_gap=0.0),  # unhealthy: never chosen
        row(1e-4, 5.0, [], lap_gap=0.1),
        row(1e-3, 5.0, [], lap_gap=-0.2),
    ]
    best = recommend(rows)[10.0]
    assert (best["step_size"], best["gamma"]) == (1e-3, 5.0)  # |−0.2| < |0.3|; 1e-4 rows dominated


def test_recommend_without_laplace_and_without_healthy_cells() -> None:
    rows = [row(1e-4, 1.0, []), row(1e-3, 5.0, []), row(1e-3, 1.0, []), row(1e-2, 1.0, ["rhat"])]
    best = recommend(rows)[10.0]
    assert (best["step_size"], best["gamma"]) == (1e-3, 1.0)  # largest ε, then smaller γ
    assert recommend([row(1e-3, 1.0, ["explosion"], nb=3.0)]) == {3.0: None}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = build_config(
        {},
        {
            "task.p": 7,
            "model.width": 8,
            "train.batch_size": 0,
            "train.epochs": 20,
            "train.checkpoint_every": 20,
        },
    )
    return train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run.path


def test_calibrate_end_to_end(tiny_run: Path) -> None:
    llc = LLCConfig(chains=2, burnin=20, draws=40, batch_size=8, seed=3)
    cal = calibrate(tiny_run, None, llc, [1e-4, 1e-2], [1.0, 10.0], nbetas=[50.0])
    assert len(cal.rows) == 4 and cal.laplace_method == "exact"
    assert all(np.isfinite(r["laplace"]) and np.isfinite(r["llc_mean"]) for r in cal.rows)
    table = read_parquet(cal.table).to_pylist()
    assert [r["step_size"] for r in table] == [1e-4, 1e-4, 1e-2, 1e-2]
    assert cal.figure.exists() and cal.figure.stat().st_size > 1000
    assert set(cal.recommended) == {50.0}
    # no new axis: the file name's hash and the columns are those of before the new axes
    tag = short_hash([llc.sampler_hash(), [1e-4, 1e-2], [1.0, 10.0], [50.0]], 8)
    assert cal.table.name == f"calibration_e20_r0_{tag}.parquet"
    assert not {"sampler", "mala_accept", "order_tau"} & set(table[0])
    assert format_recommendation(cal) and "nβ=50" in format_recommendation(cal)[0]

    # a cell's chains do not depend on the rest of the grid (per-replica streams): identical λ̂
    one = calibrate(tiny_run, 20, llc, [1e-2], [10.0], nbetas=[50.0], laplace="off", write=False)
    same = next(r for r in cal.rows if r["step_size"] == 1e-2 and r["gamma"] == 10.0)
    np.testing.assert_allclose(one.rows[0]["llc_chains"], same["llc_chains"], rtol=1e-6)
    assert one.table is None and math.isnan(one.rows[0]["laplace"])


# --- issue 21 item 6: sampler axis, ordering check, MALA target, the reason -------------------


def cell(eps: float, llcs: list[float], gam: float = 1.0, acc: float | None = None, **kw):
    """One cell's rows at checkpoints 100, 200, ... with per-checkpoint λ̂ ``llcs``."""
    out = []
    for k, v in enumerate(llcs):
        r = row(eps, gam, kw.get("flags", []), **{k2: v2 for k2, v2 in kw.items() if k2 != "flags"})
        r |= {"epoch": 100 * (k + 1), "llc_mean": v, "llc_std": 0.05 * v, "rhat": 1.01}
        r |= {"ess": 250.0}
        if acc is not None:
            r["mala_accept"] = acc
        out.append(r)
    return out


def test_kendall_tau_known_values() -> None:
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    x = np.array([[10, 20, 30, 40], [4, 3, 2, 1], [1, 3, 2, 4], [1, np.nan, 3, 4]], dtype=float)
    tau = kendall_tau(x, ref)
    # one adjacent swap of 4 checkpoints: 5 concordant, 1 discordant of 6 pairs -> 4/6
    np.testing.assert_allclose(tau[:3], [1.0, -1.0, 2 / 3], atol=1e-12)
    assert math.isnan(tau[3])
    # a swap within noise is a tie: 3 vs 2.9 with standard errors 0.2 (|Δ| < 2·√0.08)
    x, se = np.array([[1.0, 3.0, 2.9]]), np.array([[0.01, 0.2, 0.2]])
    np.testing.assert_allclose(kendall_tau(x, ref[:3]), [1 / 3], atol=1e-12)
    np.testing.assert_allclose(kendall_tau(x, ref[:3], se), [2 / math.sqrt(6)], atol=1e-12)
    assert math.isnan(kendall_tau(x, ref[:3], np.full((1, 3), 10.0))[0])  # all within noise
    # consensus is rank based: scales that differ by 1000x still agree
    np.testing.assert_allclose(consensus_order(np.array([[1, 2, 3], [1e3, 2e3, 3e3]])), [0, 1, 2])


def test_ordering_check_rejects_the_cell_that_flips_the_checkpoints() -> None:
    rows = (
        cell(1e-4, [1.0, 2.0, 3.0, 4.0])
        + cell(1e-3, [1.5, 2.5, 3.5, 4.5])
        + cell(1e-2, [9.0, 8.0, 7.0, 6.0])  # largest ε, healthy, but the order is reversed
    )
    order_check(rows)
    taus = {r["step_size"]: r["order_tau"] for r in rows}
    assert taus == {1e-4: 1.0, 1e-3: 1.0, 1e-2: -1.0}
    best = recommend(rows)[10.0]
    assert best["step_size"] == 1e-3 and best["epoch"] == 400  # the row at the last checkpoint
    # without the ordering criterion the flipped cell would have won (largest healthy ε)
    assert recommend(rows, order_min=-1.0)[10.0]["step_size"] == 1e-2
    why = explain(rows)[10.0]
    assert "flipped the checkpoint order" in why and "ε=0.01" in why


def test_mala_target_excludes_cells_below_it() -> None:
    rows = cell(1e-4, [1.0], acc=0.99) + cell(1e-3, [1.0], acc=0.93) + cell(1e-2, [1.0], acc=0.6)
    assert recommend(rows)[10.0]["step_size"] == 1e-2  # no target: largest healthy ε
    assert recommend(rows, mala_target=0.9)[10.0]["step_size"] == 1e-3
    assert recommend(rows, mala_target=0.95)[10.0]["step_size"] == 1e-4
    assert recommend(rows, mala_target=1.0)[10.0] is None
    assert "below the MALA target" in explain(rows, mala_target=1.0)[10.0]
    # a sampler without MALA acceptance (NaN) is not judged on it
    rms = [r | {"sampler": "rmsprop_sgld", "mala_accept": math.nan} for r in cell(1e-3, [1.0])]
    assert recommend(rms, mala_target=0.99)[10.0] is not None


def test_reason_names_every_criterion_and_the_runners_up() -> None:
    rows = (
        cell(1e-4, [1.0, 2.0, 3.0], acc=0.99, lap_gap=0.4)
        + cell(1e-3, [1.2, 2.2, 3.2], acc=0.95, lap_gap=0.1)
        + cell(1e-2, [1.0, 2.0, 3.0], acc=0.5, lap_gap=0.0)  # below the target
        + cell(1e-1, [1.0, 2.0, 3.0], flags=["nonstationary"])  # unhealthy
        + cell(1e-3, [1.1, 2.1, 3.1], gam=10.0, acc=0.97, lap_gap=-0.3)  # passes, farther λ_Lap
    )
    order_check(rows)
    best = recommend(rows, mala_target=0.9)[10.0]
    assert (best["step_size"], best["gamma"]) == (1e-3, 1.0)
    why = explain(rows, mala_target=0.9)[10.0]
    for phrase in (
        "ε=0.001, γ=1 won",
        "healthy chains at 3/3",
        "R-hat 1.010 ≤ 1.1",
        "ESS 250 ≥ 100",
        "MALA acceptance 0.95 ≥ target 0.9",
        "checkpoint order kept (τ 1.00",
        "chain spread 5%",
        "closest to λ_Lap",
        "ε=0.01, γ=1: below the MALA target (acceptance 0.50 < 0.9)",  # larger ε at its γ
        "ε=0.001, γ=10 (|gap| 30%)",  # a passing runner-up and why it lost
        "1 cell(s) unhealthy",
    ):
        assert phrase in why, (phrase, why)


def test_winner_across_samplers_without_laplace_is_the_most_stable() -> None:
    sg = [r | {"sampler": "sgld", "llc_std": 0.3} for r in cell(1e-3, [1.0])]
    rms = [r | {"sampler": "rmsprop_sgld", "llc_std": 0.1} for r in cell(1e-4, [1.0])]
    best = recommend(sg + rms)[10.0]
    assert best["sampler"] == "rmsprop_sgld"
    assert "most stable sampler" in explain(sg + rms)[10.0]


def test_bad_sampler_and_target_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown sampler 'nuts'; choose from sgld, rmsprop_sgld"
    ):
        check_samplers(["sgld", "nuts"])
    with pytest.raises(ConfigError, match="give at least one of sgld, rmsprop_sgld, sgnht"):
        check_samplers([])
    assert check_samplers(["rmsprop_sgld", "sgld", "rmsprop_sgld"]) == ["rmsprop_sgld", "sgld"]
    for bad in (1.5, -0.1, math.nan):
        with pytest.raises(ConfigError, match=r"mala_target .* must be in \[0, 1\]"):
            check_fraction("mala_target (--mala-target)", bad)
    llc = LLCConfig(chains=2, burnin=5, draws=5)
    with pytest.raises(ConfigError, match="choose from"):  # refused before the run is read
        calibrate(tmp_path, None, llc, [1e-3], [1.0], samplers=["bogus"])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        calibrate(tmp_path, None, llc, [1e-3], [1.0], mala_target=2.0)


def test_cli_rejects_unknown_sampler_and_target(tiny_run: Path, run_cli) -> None:
    rc, out, err = run_cli(["llc", "calibrate", str(tiny_run), "--samplers", "sgld,x"], tiny_run)
    assert rc == 2 and "choose from sgld, rmsprop_sgld, sgnht" in err
    assert len(err.strip().splitlines()) == 1
    rc, out, err = run_cli(["llc", "calibrate", str(tiny_run), "--mala-target", "1.2"], tiny_run)
    assert rc == 2 and "[0, 1]" in err and len(err.strip().splitlines()) == 1


def test_sampler_axis_checkpoints_and_mala_end_to_end(tiny_run: Path, run_cli) -> None:
    llc = LLCConfig(chains=2, burnin=20, draws=40, batch_size=8, seed=3)
    grid = ([1e-4, 1e-2], [10.0])
    cal = calibrate(
        tiny_run, None, llc, *grid, nbetas=[50.0], laplace="off",
        samplers=["sgld", "rmsprop_sgld"], epochs=[0, 20], mala_target=0.0,
    )  # fmt: skip
    assert len(cal.rows) == 2 * 2 * 2  # samplers × ε × checkpoints
    assert [r["sampler"] for r in cal.rows] == ["sgld"] * 4 + ["rmsprop_sgld"] * 4
    assert [r["epoch"] for r in cal.rows[:4]] == [0, 20, 0, 20]
    acc = np.array([r["mala_accept"] for r in cal.rows])
    assert np.all((acc[:4] >= 0) & (acc[:4] <= 1)) and np.isnan(acc[4:]).all()
    assert all(r["order_tau"] in (-1.0, 1.0) or math.isnan(r["order_tau"]) for r in cal.rows)
    assert any("rmsprop_sgld cells are not judged on the MALA target" in n for n in cal.notes)
    assert "sampler" in read_parquet(cal.table).column_names
    assert cal.table.name.startswith("calibration_e0-20_r0_") and cal.figure.exists()
    assert " won: passed " in cal.reasons[50.0] or "no cell passed" in cal.reasons[50.0]

    # each sampler's cells are those of a plain calibration with that sampler (same streams)
    for method, part in (("sgld", cal.rows[:4]), ("rmsprop_sgld", cal.rows[4:])):
        one = calibrate(
            tiny_run, 20, llc.model_copy(update={"method": method}), *grid, nbetas=[50.0],
            laplace="off", write=False,
        )  # fmt: skip
        got = [r["llc_chains"] for r in part if r["epoch"] == 20]
        np.testing.assert_allclose(got, [r["llc_chains"] for r in one.rows], rtol=1e-4)
        assert "sampler" not in one.rows[0] and "order_tau" not in one.rows[0]

    rc, out, _ = run_cli(
        ["llc", "calibrate", str(tiny_run), "--step-sizes", "1e-4,1e-2", "--gammas", "10",
         "--nbetas", "50", "--chains", "2", "--burnin", "20", "--draws", "40", "--laplace", "off",
         "--samplers", "sgld,rmsprop_sgld", "--json"],
        tiny_run,
    )  # fmt: skip
    assert rc == 0, out
    data = json.loads(out.strip().splitlines()[-1])
    assert {r["sampler"] for r in data["rows"]} == {"sgld", "rmsprop_sgld"}
    assert data["recommended"][0]["reason"]


def test_restricted_calibration(tiny_run: Path, run_cli) -> None:
    """`--restrict` calibrates a restriction's own chains: a restriction to every weight gives
    the plain grid's λ̂ (same streams), one to V alone (W held at w*) gives other numbers; the
    Laplace prediction (the whole model's) is left out and the file is the restriction's own."""
    llc = LLCConfig(chains=2, burnin=20, draws=40, batch_size=8, seed=3)
    grid = ([1e-3, 1e-2], [10.0])
    full = calibrate(tiny_run, None, llc, *grid, nbetas=[50.0], laplace="off", write=False)
    chains = np.array([r["llc_chains"] for r in full.rows])
    every = llc.model_copy(update={"restrict": {"every": ["*"]}})
    same = calibrate(tiny_run, None, every, *grid, nbetas=[50.0], write=False)
    np.testing.assert_allclose([r["llc_chains"] for r in same.rows], chains, rtol=1e-4)
    only_v = llc.model_copy(update={"restrict": {"V": ["V"]}})
    part = calibrate(tiny_run, None, only_v, *grid, nbetas=[50.0])
    lam_v = np.array([r["llc_chains"] for r in part.rows])
    assert np.all(np.isfinite(lam_v)) and np.all(np.abs(lam_v - chains) > 0.01 * np.abs(chains))
    assert part.laplace_method is None and any("restricted to V" in n for n in part.notes)
    plain_tag = short_hash([llc.sampler_hash(), *grid, [50.0]], 8)
    assert part.table.name != f"calibration_e20_r0_{plain_tag}.parquet"

    two = llc.model_copy(update={"restrict": {"V": ["V"], "W": ["W"]}})
    with pytest.raises(ConfigError, match="one restriction at a time"):
        calibrate(tiny_run, None, two, *grid, nbetas=[50.0], write=False)
    rc, out, err = run_cli(
        ["llc", "calibrate", str(tiny_run), "--restrict", "V=nothing*", "--laplace", "off"],
        tiny_run,
    )
    assert rc == 2 and "nothing*" in err and len(err.strip().splitlines()) == 1

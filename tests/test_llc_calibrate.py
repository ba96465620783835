"""Step-size calibration: grid layout, recommendation rule, one batched end-to-end call."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from grokbasin.config import LLCConfig, build_config
from grokbasin.llc.calibrate import calibrate, format_recommendation, per_replica, recommend
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
    assert format_recommendation(cal) and "nβ=50" in format_recommendation(cal)[0]

    # a cell's chains do not depend on the rest of the grid (per-replica streams): identical λ̂
    one = calibrate(tiny_run, 20, llc, [1e-2], [10.0], nbetas=[50.0], laplace="off", write=False)
    same = next(r for r in cal.rows if r["step_size"] == 1e-2 and r["gamma"] == 10.0)
    np.testing.assert_allclose(one.rows[0]["llc_chains"], same["llc_chains"], rtol=1e-6)
    assert one.table is None and math.isnan(one.rows[0]["laplace"])

"""Grokking metrics on synthetic curves whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from grokbasin.analysis.grokking import (
    GROKKING,
    IMMEDIATE,
    NO_GEN,
    curve_metrics,
    first_crossing,
    grokking_metrics,
    gsm,
    gsm_signed,
    regime,
)

EPOCHS = np.arange(0, 1001, 10)  # checkpoints every 10 epochs, T = 1000


def step(at: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Accuracy curve that jumps from low to high at epoch ``at``."""
    return np.where(EPOCHS >= at, high, low)


def test_grokking_curve_known_answers():
    m = curve_metrics(EPOCHS, step(100), step(600))
    assert (m["t_mem"], m["t_gen"], m["delay"]) == (100, 600, 500)
    assert m["regime"] == GROKKING
    # |a_T − a_V| = 1 on epochs 100..599 (500 of T = 1000), weighted per epoch: exact up to fp
    assert m["gsm"] == pytest.approx(0.5, abs=1e-12)
    assert m["gsm_signed"] == pytest.approx(0.5, abs=1e-12)


def test_never_memorises():
    m = curve_metrics(EPOCHS, step(100, high=0.5), step(100, high=0.3))
    assert m["t_mem"] is None and m["t_gen"] is None and m["delay"] is None
    assert m["regime"] == NO_GEN
    assert m["gsm"] == 0.0 and m["gsm_signed"] == 0.0  # gated on final val acc: exactly 0


def test_never_generalises():
    m = curve_metrics(EPOCHS, step(100), step(0, high=0.2))
    assert m["t_mem"] == 100 and m["t_gen"] is None
    assert m["regime"] == NO_GEN and m["gsm"] == 0.0


def test_generalises_at_once():
    m = curve_metrics(EPOCHS, step(100), step(100))
    assert m["delay"] == 0 and m["regime"] == IMMEDIATE
    assert m["gsm"] == pytest.approx(0.0, abs=1e-12)


def test_validation_leads_training_gives_negative_signed_gsm():
    m = curve_metrics(EPOCHS, step(300), step(200))
    assert m["regime"] == IMMEDIATE and m["delay"] == -100
    # 100 of 1000 epochs with a_V − a_T = 1: paper GSM +0.1, signed −0.1 (exact up to fp)
    assert m["gsm"] == pytest.approx(0.1, abs=1e-12)
    assert m["gsm_signed"] == pytest.approx(-0.1, abs=1e-12)


def test_regime_margin_is_strict():
    # margin = max(2 checkpoints × 10, 1.0 × t_mem = 100) = 100 epochs
    assert regime(100, 200, 10.0) == IMMEDIATE
    assert regime(100, 210, 10.0) == GROKKING
    assert regime(None, 50, 10.0) == IMMEDIATE
    assert regime(5, 40, 10.0) == GROKKING  # margin max(20, 5) = 20 < delay 35


def test_thresholds_are_configurable_and_inclusive():
    acc = np.linspace(0, 1, EPOCHS.size)  # acc at epoch e is e/1000
    assert first_crossing(EPOCHS, acc, 0.5) == 500
    m = curve_metrics(EPOCHS, acc, acc, mem_threshold=0.3, gen_threshold=0.9)
    assert (m["t_mem"], m["t_gen"]) == (300, 900)


def test_gsm_exact_for_curves_constant_between_checkpoints():
    dense = np.arange(0, 1001)
    coarse = np.array([0, 100, 400, 600, 1000])  # uneven spacing
    f_t = lambda e: (e > 100).astype(float)  # noqa: E731  (constant on each (e_i-1, e_i])
    f_v = lambda e: (e > 600).astype(float)  # noqa: E731
    # epoch weighting makes the coarse sum equal the per-epoch one: 500/1000, exact up to fp
    assert gsm(dense, f_t(dense), f_v(dense)) == pytest.approx(0.5, abs=1e-12)
    assert gsm(coarse, f_t(coarse), f_v(coarse)) == pytest.approx(0.5, abs=1e-12)


def test_gsm_horizon_holds_the_last_values_and_scales_as_one_over_t():
    e = np.array([0, 100, 200, 300])
    at, av = np.array([0.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 1.0])
    assert gsm(e, at, av) == pytest.approx(100 / 300)  # gap 1 over (100, 200]
    assert gsm(e, at, av, horizon=1000) == pytest.approx(100 / 1000)
    assert gsm(e, at, av, horizon=200) == gsm(e, at, av)  # an earlier horizon changes nothing
    held_gap = np.array([0.0, 1.0, 1.0, 0.96])  # the last gap (0.04) is held to the horizon
    assert gsm(e, held_gap, av, horizon=1000) == pytest.approx((100 + 0.04 * 800) / 1000)


def test_gsm_threshold_gate():
    at, av = step(100), step(600, high=0.92)
    assert gsm(EPOCHS, at, av) == 0.0  # 0.92 < 0.95
    assert gsm_signed(EPOCHS, at, av) > 0.0  # 0.92 ≥ 0.9 passes the variant's gate


def _table(replicas: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    rows = []
    for rep, (at, av) in replicas.items():
        for e, a, v in zip(EPOCHS, at, av, strict=True):
            rows.append(
                {
                    "epoch": int(e),
                    "step": int(e) * 2,
                    "replica": rep,
                    "seed": rep,
                    "lr": 1e-3 * (rep + 1),
                    "weight_decay": 1e-4,
                    "train_loss": 1 - a,
                    "val_loss": 1 - v,
                    "train_acc": float(a),
                    "val_acc": float(v),
                }
            )
    return rows[::-1]  # reversed order: the function must sort by replica and epoch


def test_grokking_metrics_per_replica_from_table():
    rows = _table({0: (step(100), step(600)), 1: (step(100), step(0, high=0.1))})
    for metrics in (rows, pa.Table.from_pylist(rows)):
        out = grokking_metrics(metrics, n_train=211, batch_size=128)
        assert [r["replica"] for r in out] == [0, 1]
        assert out[0]["regime"] == GROKKING and out[1]["regime"] == NO_GEN
        assert out[0]["t_gen"] == 600 and out[1]["t_gen"] is None
        # T = η(n − B)/(2nB) with η = 1e-3, n = 211, B = 128: hand value 1.5365e-6 (rel 1e-9)
        assert out[0]["temperature"] == pytest.approx(1e-3 * 83 / (2 * 211 * 128), rel=1e-9)
        assert out[1]["lr"] == pytest.approx(2e-3)
        assert out[0]["final_val_loss"] == pytest.approx(0.0)


def test_rejects_mismatched_curves():
    with pytest.raises(ValueError):
        curve_metrics([0, 1, 2], [0.0, 1.0], [0.0, 1.0, 1.0])

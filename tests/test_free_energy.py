"""Free energy, transition detection and the Arrhenius fit on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grokbasin.analysis.free_energy import (
    arrhenius_fit,
    delta_free_energy,
    detect_transitions,
    free_energy,
    grokking_times,
    smooth,
    transition_pairs,
)


def test_free_energy_and_delta_hand_values():
    # exact arithmetic up to float rounding (tolerance 1e-9 relative)
    n = 1000
    assert free_energy(0.01, 20.0, n) == pytest.approx(10.0 + 20.0 * math.log(1000), rel=1e-9)
    df = delta_free_energy(llc_i=30.0, llc_j=20.0, loss_i=0.02, loss_j=0.01, n=n)
    assert df == pytest.approx(-10.0 * math.log(1000) - 10.0, rel=1e-9)
    # vectorised over runs
    df = delta_free_energy(np.array([1.0, 2.0]), np.array([2.0, 2.0]), 0.0, 0.0, n)
    assert np.allclose(df, [math.log(1000), 0.0])


def test_grokking_times():
    e = np.array([0, 100, 200, 300, 400])
    tr = np.array([0.2, 1.0, 1.0, 1.0, 1.0])
    va = np.array([0.96, 0.1, 0.5, 0.97, 0.99])  # an early val spike before memorisation is ignored
    assert grokking_times(e, tr, va) == (100, 300)
    assert grokking_times(e, np.full(5, 0.9), va) is None
    assert grokking_times(e, tr, np.full(5, 0.5)) is None


def test_smooth_keeps_constant_and_length():
    c = np.full(17, 3.0)
    assert np.allclose(smooth(c, 5), 3.0) and smooth(c, 5).shape == (17,)
    lin = np.arange(20.0)
    assert np.allclose(smooth(lin, 3)[1:-1], lin[1:-1])  # exact for lines away from the ends


def _staircase(levels, times, length, width=20, noise=0.0, seed=0):
    """A loss with logistic drops between plateau ``levels`` centred at ``times``."""
    t = np.arange(length, dtype=float)
    y = np.full(length, levels[0])
    for (a, b), tc in zip(zip(levels[:-1], levels[1:], strict=True), times, strict=True):
        y -= (a - b) / (1 + np.exp(-(t - tc) / (width / 8)))
    return y + noise * np.random.default_rng(seed).standard_normal(length)


def test_detect_transitions_finds_each_drop():
    # three drops of 40%, 35%, 25% of the total plus a 3% one that must be ignored
    loss = _staircase([1.0, 0.6, 0.25, 0.22, 0.0], [200, 500, 650, 800], 1000, noise=0.003)
    found = detect_transitions(loss, window=9)
    # tolerance: each detected drop centre within 15 steps of the true one
    centres = [t.at for t in found]
    assert len(found) == 3, centres
    assert np.allclose(centres, [200, 500, 800], atol=15)
    assert sum(t.drop for t in found) == pytest.approx(1.0, abs=0.1)
    pairs = transition_pairs(np.arange(1000) * 10, found)
    assert len(pairs) == 2 and all(b > a for a, b in pairs)


def test_detect_transitions_none_on_flat_or_rising():
    assert detect_transitions(np.ones(50)) == []
    assert detect_transitions(np.linspace(0, 1, 50)) == []


def test_arrhenius_fit_recovers_slope_and_interval():
    # ΔF = -3·log r + 5 + noise: slope within its bootstrap interval, R² high; tolerance 0.3
    g = np.random.default_rng(1)
    r = np.exp(g.uniform(1, 6, 200))
    df = -3.0 * np.log(r) + 5.0 + 0.5 * g.standard_normal(200)
    fit = arrhenius_fit(df, r, n_boot=500)
    assert fit.slope == pytest.approx(-3.0, abs=0.3)
    assert fit.intercept == pytest.approx(5.0, abs=1.0)
    assert fit.slope_ci[0] < fit.slope < fit.slope_ci[1]
    assert fit.slope_ci[1] - fit.slope_ci[0] < 0.5
    assert fit.r2 > 0.9
    assert fit.beta_eff == pytest.approx(1 / fit.slope)


def test_arrhenius_fit_no_relation_has_low_r2_and_ci_covers_zero():
    g = np.random.default_rng(2)
    r = np.exp(g.uniform(1, 6, 100))
    df = g.standard_normal(100)
    fit = arrhenius_fit(df, r, n_boot=500, seed=3)
    assert fit.r2 < 0.1
    assert fit.slope_ci[0] < 0 < fit.slope_ci[1]
    # deterministic: same seed, same interval (counter-based streams)
    assert arrhenius_fit(df, r, n_boot=500, seed=3).slope_ci == fit.slope_ci


def test_arrhenius_fit_rejects_too_few_runs():
    with pytest.raises(ValueError):
        arrhenius_fit([1.0, 2.0], [3.0, 4.0])

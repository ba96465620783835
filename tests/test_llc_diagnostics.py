"""Health flags, ArviZ statistics and InferenceData export of SGLD traces (SPEC §7)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from grokbasin.llc.diagnostics import Thresholds, diagnose, llc_scale, to_inference_data


def ar1(rng: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Stationary AR(1) noise with unit marginal variance along the last axis."""
    e = rng.normal(size=shape) * np.sqrt(1 - rho**2)
    x = np.empty(shape)
    x[..., 0] = rng.normal(size=shape[:-1])
    for t in range(1, shape[-1]):
        x[..., t] = rho * x[..., t - 1] + e[..., t]
    return x


def healthy(rng: np.random.Generator, G: int = 3, C: int = 4, D: int = 1000) -> tuple:
    """iid draws around 1.0 above an init loss of 0.5 (lambda-hat = 10 at nbeta 20)."""
    return 1.0 + 0.05 * rng.normal(size=(G, C, D)), np.full((G, C), 0.5), np.full(G, 20.0)


def test_healthy_traces_carry_no_flags() -> None:
    tr, init, nb = healthy(np.random.default_rng(0))
    for d in diagnose(tr, init, nb):
        assert d["flags"] == [] and d["chain_flags"] == [[]] * 4
        assert abs(d["rhat"] - 1.0) < 0.02  # iid chains: R-hat within 2% of 1
        assert d["ess"] > 2000  # iid: bulk ESS near C*D = 4000, well above half of it
        assert abs(d["trend"]) < 0.05  # no drift: relative change below the 5% flag threshold


def test_llc_scale_matches_estimator_definition() -> None:
    tr, init, nb = healthy(np.random.default_rng(1), G=2)
    x = llc_scale(tr, init, nb)
    np.testing.assert_allclose(x.mean(axis=2), 20.0 * (tr.mean(axis=2) - 0.5), rtol=1e-12)


def test_trend_in_second_half_is_flagged_with_its_size() -> None:
    rng = np.random.default_rng(2)
    tr, init, nb = healthy(rng, G=1, D=800)
    tr = tr + np.linspace(0.0, 0.2, 800)  # lambda-scale rises by 2 across the second half
    (d,) = diagnose(tr, init, nb)
    assert "nonstationary" in d["flags"]
    est = 20.0 * (tr.mean() - 0.5)
    assert d["trend"] == pytest.approx(2.0 / est, rel=0.15)  # 15%: noise in the fitted slope


def test_stationary_autocorrelated_chains_rarely_flag_a_trend() -> None:
    rng = np.random.default_rng(3)
    G, C, D = 40, 3, 500
    tr = 1.0 + 0.05 * ar1(rng, (G, C, D), rho=0.9)
    out = diagnose(tr, np.full((G, C), 0.5), np.full(G, 20.0))
    # long-run-variance slope SE at z = 3: false positives ~1% here; allow 2 of 40
    assert sum("nonstationary" in d["flags"] for d in out) <= 2


def test_exploding_chain_is_flagged_alone() -> None:
    tr, init, nb = healthy(np.random.default_rng(4), G=1)
    tr[0, 2, 700:] = np.geomspace(1.5, 1e4, 300)
    (d,) = diagnose(tr, init, nb)
    assert d["chain_flags"] == [[], [], ["explosion"], []]
    assert "explosion" in d["flags"]


def test_explosion_threshold_k_is_configurable() -> None:
    tr, init, nb = healthy(np.random.default_rng(5), G=1)
    tr[0, 0, 10] = 1.0 + 0.05 * 8  # an 8-sigma draw: flagged at k = 5, not at the default 10
    assert diagnose(tr, init, nb)[0]["chain_flags"][0] == []
    assert diagnose(tr, init, nb, Thresholds(explosion_k=5))[0]["chain_flags"][0] == ["explosion"]


def test_large_llc_excess_over_init_is_not_an_explosion() -> None:
    rng = np.random.default_rng(6)
    tr = 3.0 + 0.1 * rng.normal(size=(1, 4, 500))  # excess 3 = 30 sigma above init 0: healthy
    (d,) = diagnose(tr, np.zeros((1, 4)), np.array([500.0]))
    assert "explosion" not in d["flags"]


def test_nonfinite_chain_is_flagged_and_excluded_from_statistics() -> None:
    tr, init, nb = healthy(np.random.default_rng(7), G=2)
    tr[1, 3, 400] = np.nan
    tr[1, 0, 10] = np.inf
    d = diagnose(tr, init, nb)[1]
    assert d["chain_flags"] == [["nonfinite"], [], [], ["nonfinite"]]
    assert np.isfinite(d["rhat"]) and np.isfinite(d["ess"])  # computed on the two good chains
    assert "rhat" not in d["flags"]


def test_all_chains_nonfinite_does_not_raise() -> None:
    tr = np.full((1, 3, 50), np.nan)
    (d,) = diagnose(tr, np.zeros((1, 3)), np.array([10.0]))
    assert d["flags"] == ["nonfinite"] and np.isnan(d["rhat"])


def test_negative_estimate_is_flagged() -> None:
    tr, init, nb = healthy(np.random.default_rng(8), G=1)
    init[0, 1] = 2.0  # chain 1 sits below its init loss
    (d,) = diagnose(tr, init, nb)
    assert d["chain_flags"][1] == ["negative"] and "negative" in d["flags"]


def test_disagreeing_chains_raise_rhat() -> None:
    tr, init, nb = healthy(np.random.default_rng(9), G=1)
    tr[0, 0] += 0.2  # one chain stuck 4 sigma higher
    (d,) = diagnose(tr, init, nb)
    assert d["rhat"] > 1.1 and "rhat" in d["flags"]


def test_short_autocorrelated_chains_have_low_ess() -> None:
    rng = np.random.default_rng(10)
    tr = 1.0 + 0.05 * ar1(rng, (1, 2, 200), rho=0.98)
    (d,) = diagnose(tr, np.full((1, 2), 0.5), np.array([20.0]))
    assert d["ess"] < 100 and "low_ess" in d["flags"]


def test_one_chain_and_constant_traces_are_quiet() -> None:
    rng = np.random.default_rng(11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        (one,) = diagnose(1.0 + 0.05 * rng.normal(size=(1, 1, 500)), np.full((1, 1), 0.5), [20.0])
        (flat,) = diagnose(np.ones((1, 3, 100)), np.full((1, 3), 0.5), np.array([20.0]))
    assert np.isnan(one["rhat"]) and "rhat" not in one["flags"]
    assert flat["flags"] == [] and np.isnan(flat["ess"])


def test_inference_data_export() -> None:
    tr, init, nb = healthy(np.random.default_rng(12), G=3, C=2, D=100)
    idata = to_inference_data(tr, init, nb, coords={"epoch": [100, 200, 300]})
    post = idata.posterior
    assert post["llc"].dims == ("chain", "draw", "group")
    assert list(post["epoch"].values) == [100, 200, 300]
    np.testing.assert_allclose(  # exact up to float64 rounding
        post["llc"].mean("draw").values.T, llc_scale(tr, init, nb).mean(axis=2), rtol=1e-12
    )
    np.testing.assert_array_equal(post["loss"].values[1, :, 2], tr[2, 1])
    assert idata.constant_data["nbeta"].shape == (3,)

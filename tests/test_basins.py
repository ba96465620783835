"""The two basins of paper A's basin-selection claim, and Thm 4.1/4.2, Cor 5.3 checked numerically.

Deterministic checks (ranks, Laplace limits) are exact or carry a stated tolerance; the SGLD checks
run where the estimator is stationary and local (tiny models, full batch, ε·nβ·μ_max = 0.03,
γ = 0.1·nβ·μ_max so every direction mixes within the burn-in) and compare λ̂ with the localised
Laplace prediction at the same (nβ, γ).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grokbasin import rng
from grokbasin.config import build_config
from grokbasin.experiments.basin_selection import laplace_at
from grokbasin.llc import laplace as lp
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.targets import from_functional, from_modular
from grokbasin.models import quadratic as q
from grokbasin.tasks.modular import all_pairs
from grokbasin.theory import basins
from grokbasin.theory import closed_form as cf
from grokbasin.theory import numeric as nm
from grokbasin.train.loop import make_setup


def _cfg(p: int, K: int, frac: float = 0.4):
    over = {"task.p": p, "task.frac": frac, "task.data_seed": 0, "model.width": K,
            "train.seeds": [0], "train.batch_size": 0}  # fmt: skip
    return build_config({}, over)


def test_effective_width_rows_count_every_checkpoint_at_once():
    V = torch.zeros(3, 2, 4)
    V[0, 0] = torch.tensor([1.0, 0.5, 1e-3, 0.0])  # rel τ 1e-2 -> 0.01: 2 units
    V[1, 0] = torch.tensor([2.0, 2.0, 2.0, 2.0])  # all 4
    V[2, 1] = torch.tensor([1.0, 0.05, 0.005, 0.0])  # 0.05 > 0.01 > 0.005: 2 units
    rows = basins.effective_width_rows(V, d=4, epochs=[0, 100, 200], n_train=3)
    assert [r["k_eff"] for r in rows] == [2, 4, 2]
    assert [r["epoch"] for r in rows] == [0, 100, 200]
    assert rows[0]["tau"] == pytest.approx(0.01, rel=1e-12) and rows[1]["tau"] == 0.02
    assert rows[2]["k_eff_rel_1e-01"] == 1 and rows[2]["k_eff_rel_1e-03"] == 3
    # Thm 5.5 with d = 4, o = 2: K_eff·5/2; data cap o(N−1)/2 = 2
    assert rows[1]["llc_keff"] == 10.0 and rows[1]["llc_keff_capped"] == 2.0
    assert rows[1]["llc_keff_onehot"] == 8.0  # K_eff·(d − 1 + o − 1)/2
    absolute = basins.effective_width_rows(V, d=4, tau=0.5)
    assert [r["k_eff"] for r in absolute] == [1, 4, 1] and "absolute" in absolute[0]["tau_rule"]


def test_lazy_ridge_memorises_and_does_not_generalise():
    # p = 11, K = 128 > N − 1 = 47: the ridge fit interpolates the centred labels
    cfg = _cfg(11, 128)
    params, fit = basins.lazy_basin(cfg)
    task = make_setup(cfg).task
    assert fit.feature_rank.tolist() == [task.n_train - 1]  # rank P⊥σ(XW) = N − 1
    assert float(fit.residual[0]) < 1e-9  # η = 1e-6·mean eigenvalue: residual ~1e-13
    acc = basins.split_accuracy(params, task, centred=True)
    assert acc["train_acc"] == [1.0]
    assert acc["val_acc"][0] < 0.2  # chance is 1/11; measured 0.07
    # the frozen W is training's initialisation: same tensor as init_params
    from grokbasin.train.loop import init_params

    assert torch.equal(params["W"], init_params(make_setup(cfg))["W"])


def test_lazy_ridge_primal_and_dual_forms_agree():
    # K ≤ N uses the K×K system, K > N the N×N one: same V up to float64 rounding (rel 1e-6)
    keys = rng.key([0])
    W = rng.normal(rng.fold_in(keys, 1), (10, 30)).double()
    x, y = all_pairs(5, "add")
    big = basins.lazy_ridge_V(W, x[None, :20], y[None, :20], 5, eta_rel=1e-3)  # K = 30 > 20
    Ft = basins._centre(basins.features(W, x[None, :20]))
    Yt = basins._centre(torch.nn.functional.one_hot(y[None, :20], 5).double())
    G = Ft[0].T @ Ft[0] + big.eta[0] * torch.eye(30, dtype=torch.float64)
    primal = torch.linalg.solve(G, Ft[0].T @ Yt[0]).T
    assert torch.allclose(big.V[0].double(), primal, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("K", [1, 3, 8, 20])
def test_onehot_jacobian_rank_is_thm42_with_rank_x_2p_minus_1(K):
    # all p² pairs, centred: rank J_c = min(K(3p − 2), p(p² − 1)) exactly (integer equality); the
    # one-hot inputs have rank 2p − 1, so each unit adds 3p − 2 directions, not 3p − 1
    p = 5
    keys = rng.key([0])
    W = rng.normal(rng.fold_in(keys, 1), (2 * p, K)).double()
    V = rng.normal(rng.fold_in(keys, 2), (p, K)).double()
    x, _ = all_pairs(p, "add")
    spec = lp.quadratic_spectrum({"W": W, "V": V}, x)
    want = min(2 * cf.onehot_llc_under(p, K), p * (p * p - 1))
    assert spec.rank == want
    # Laplace limit: λ_Lap(nβ = 1e8, γ = 1) within 1% of rank/2
    assert float(lp.laplace_llc(spec, 1e8, 1.0)) == pytest.approx(want / 2, rel=1e-2)


@pytest.mark.parametrize("K,lam", [(2, 4.0), (3, 6.0), (8, 6.0)])
def test_thm41_42_laplace_limit_on_generic_inputs(K, lam):
    # d = 3, o = 2, Gaussian inputs (rank X = d): λ = ½·min(K(d + o − 1), o·d(d+1)/2)
    # = ½·min(4K, 12): Thm 4.2 for K = 2, both for K = 3, Thm 4.1's cap for K = 8
    assert cf.quadratic_llc(3, 2, K)[0] == lam
    keys = rng.key([1])
    W = rng.normal(rng.fold_in(keys, 1), (3, K)).double()
    V = rng.normal(rng.fold_in(keys, 2), (2, K)).double()
    X = rng.normal(rng.fold_in(keys, 3), (40, 3)).double()[0]
    G = nm.quadratic_gram(W, V, X, centred=False)[0]
    spec = lp.spectrum_from_gram(G, 40, (80, 5 * K))
    assert spec.rank == int(2 * lam)  # exact
    assert float(lp.laplace_llc(spec, 1e8, 1.0)) == pytest.approx(lam, rel=1e-2)


@pytest.mark.parametrize("K", [6, 20, 60])
def test_cor53_lazy_laplace_limit_and_bounds(K):
    # V-only model at the lazy point is linear in V: its LLC is (p/2)·rank P⊥σ(XW) on the training
    # set, = (p/2)·min(K, N − 1) (exact), inside Cor 5.3's window
    # (p/2)·[min(K, 2p−1), min(K, p(2p−1))]
    p = 7
    cfg = _cfg(p, K)
    params, fit = basins.lazy_basin(cfg)
    task = make_setup(cfg).task
    xt = task.x[task.train_idx[0]]
    one = {k: v[:1].double() for k, v in params.items()}
    lim = laplace_at(one, xt, 1e12, 1.0, v_only=True)
    N = task.n_train
    assert lim["rank"] == p * min(K, N - 1)
    assert lim["lap"] == pytest.approx(cf.lazy_llc(p, K, N - 1), rel=1e-3)
    lo, hi = cf.lazy_bounds_modular(p, K)
    # on all p² pairs l = p² (Cor 5.3 applies there); the training split can only lower it
    assert lo <= cf.lazy_llc(p, K, cf.modular_feature_dim(p)) <= hi
    assert cf.lazy_llc(p, K, N - 1) <= hi


def _centred_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r = y - pred
    r = r - r.mean(dim=1, keepdim=True)
    return r.square().sum(dim=(1, 2)) / (2 * pred.shape[1])


def _sgld_vs_laplace(target, spec_mu: np.ndarray, chains: int, steps: int) -> tuple[float, float]:
    """λ̂ and λ_Lap at nβ = 1e3, ε·nβ·μ_max = 0.03, γ = 0.1·nβ·μ_max (every direction mixes)."""
    nb, mu_max = 1e3, float(spec_mu.max())
    eps, gamma = 0.03 / (nb * mu_max), 0.1 * nb * mu_max
    est = estimate_llc(target, chains=chains, nbetas=[nb], step_size=eps, gamma=gamma,
                       burnin=steps // 2, draws=steps // 2, diagnose=False)  # fmt: skip
    return float(est.llc_mean[0, 0]), float(lp.laplace_llc(spec_mu, nb, gamma))


@pytest.mark.slow
def test_sgld_matches_laplace_at_a_realisable_point():
    # teacher = student at a generic point, all p² pairs, full batch: the posterior is Gaussian
    # to leading order, so λ̂ ≈ λ_Lap; 16 chains × 2000 steps, tolerance 10%
    # (measured 8.625 vs 8.625)
    p, K, C = 5, 3, 16
    keys = rng.key([0])
    P0 = {"W": rng.normal(rng.fold_in(keys, 1), (2 * p, K)),
          "V": rng.normal(rng.fold_in(keys, 2), (p, K)) / K**0.5}  # fmt: skip
    x, _ = all_pairs(p, "add")
    Y = q.forward(P0, x[None])[0].detach()
    spec = lp.quadratic_spectrum({k: v.double() for k, v in P0.items()}, x)
    target = from_functional(
        q.forward, _centred_mse, {k: v.repeat(C, 1, 1) for k, v in P0.items()}, x, Y
    )
    got, lap = _sgld_vs_laplace(target, spec.positive, C, 2000)
    assert got == pytest.approx(lap, rel=0.10)


@pytest.mark.slow
def test_sgld_matches_laplace_on_the_lazy_v_only_model():
    # V only at the lazy point: the loss is exactly quadratic in V, the posterior exactly
    # Gaussian; 16 chains × 1000 steps, tolerance 10% (measured 34.15 vs 33.96)
    p, K, C = 7, 20, 16
    cfg = _cfg(p, K)
    params, _ = basins.lazy_basin(cfg)
    task = make_setup(cfg).task
    F = basins.features(params["W"][:1], task.x[task.train_idx[0]])[0]
    mu = torch.linalg.svdvals(F - F.mean(dim=0)).pow(2).numpy() / task.n_train
    mu = np.repeat(mu[mu > mu.max() * 1e-10], p)
    rows = task.train_idx.repeat(C, 1)
    p0 = {k: v.repeat(C, 1, 1) for k, v in params.items()}
    target = from_modular(cfg, p0, rows, task.n_train, names=["V"])
    got, lap = _sgld_vs_laplace(target, mu, C, 1000)
    assert got == pytest.approx(lap, rel=0.10)

"""Susceptibilities and Bayesian influence functions (``llc.influence``): against explicit
loops, a Gaussian posterior with a closed-form covariance, and devinterp 2.0.1 where importable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grokbasin.llc import bif, susceptibilities
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.targets import from_functional


def _loop_cov(a: np.ndarray, b: np.ndarray) -> float:
    """Sample covariance (ddof 1) of two 1-D arrays, one term at a time."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    return sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True)) / (len(a) - 1)


def test_bif_matches_explicit_loops() -> None:
    # [K=2 checkpoints, C=3 chains, D=5 draws, m] traces; every entry by hand (1e-12)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 5, 2))
    cov, corr = bif(a, b, kind="covariance"), bif(a, b)
    infl, mean_cov = bif(a, b, kind="influence"), bif(a, b, kind="covariance", chains="mean")
    assert cov.shape == (2, 4, 2)
    for k in range(2):
        for i in range(4):
            for j in range(2):
                x, y = a[k, :, :, i].ravel(), b[k, :, :, j].ravel()  # chains × draws pooled
                c = _loop_cov(x, y)
                assert cov[k, i, j] == pytest.approx(c, abs=1e-12)
                assert infl[k, i, j] == pytest.approx(-c, abs=1e-12)
                r = c / math.sqrt(_loop_cov(x, x) * _loop_cov(y, y))
                assert corr[k, i, j] == pytest.approx(r, abs=1e-12)
                xm, ym = a[k, :, :, i].mean(0), b[k, :, :, j].mean(0)  # chains averaged first
                assert mean_cov[k, i, j] == pytest.approx(_loop_cov(xm, ym), abs=1e-12)
    # the default second operand is the first: a symmetric matrix with a unit diagonal
    self_corr = bif(a)
    np.testing.assert_allclose(self_corr, np.swapaxes(self_corr, -1, -2), atol=1e-12)
    np.testing.assert_allclose(np.diagonal(self_corr, axis1=-2, axis2=-1), 1.0, atol=1e-12)


def test_susceptibilities_match_explicit_loops() -> None:
    # devinterp's formula term by term, restricted run r ≠ full run f, 2 checkpoints (1e-12)
    rng = np.random.default_rng(1)
    K, C, D, m = 2, 2, 6, 3
    L, P = rng.normal(size=(K, C, D)), rng.normal(size=(K, C, D, m))
    fL, fP = rng.normal(size=(K, C, D)), rng.normal(size=(K, C, D, m))
    init = rng.normal(size=(K, C))
    got = susceptibilities(L, P, init, fL, fP)
    assert got.shape == (K, m)
    for k in range(K):
        init_mean = sum(init[k]) / C
        pairs = [(c, d) for c in range(C) for d in range(D)]
        phi = {cd: L[k][cd] - init_mean for cd in pairs}
        e_phi = sum(phi.values()) / len(pairs)
        e_phi_l = sum(phi[cd] * L[k][cd] for cd in pairs) / len(pairs)
        for j in range(m):
            e_phi_p = sum(phi[cd] * P[k][cd][j] for cd in pairs) / len(pairs)
            delta = fL[k].mean() - sum(fP[k][cd][j] for cd in pairs) / len(pairs)
            assert got[k, j] == pytest.approx(e_phi_l - e_phi_p - e_phi * delta, abs=1e-12)
    # unrestricted (r = f): χ_j = −Cov(φ, ℓ_j − L) with ddof 0, whatever L(w*) is
    own = susceptibilities(L, P, init)
    for k in range(K):
        for j in range(m):
            x, y = L[k].ravel(), (P[k, ..., j] - L[k]).ravel()
            assert own[k, j] == pytest.approx(-np.cov(x, y, bias=True)[0, 1], abs=1e-12)


def test_bad_shapes_and_kinds_are_refused() -> None:
    a = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match="kind must be one of correlation"):
        bif(a, kind="pearson")
    with pytest.raises(ValueError, match=r"losses must be \[..., chains, draws, samples\]"):
        bif(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same leading axes"):
        susceptibilities(np.zeros((2, 5)), np.zeros((2, 4, 3)), np.zeros(()))


def _linear(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.bmm(x, params["W"].transpose(1, 2))


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (pred - y).square().sum(-1).mean(-1)


def test_bif_of_a_gaussian_posterior_has_the_closed_form() -> None:
    # Linear regression at w* = OLS, full-batch SGLD: the localised tempered posterior is
    # N(w*, Σ) with Σ = (nβ·XᵀX/n + γI)⁻¹. Per-sample loss ℓ_i = ½(u_i − r_i)², u_i = x_iᵀδ, so by
    # Isserlis Cov(ℓ_i, ℓ_j) = r_i r_j s_ij + ½ s_ij² with s_ij = x_iᵀΣx_j. The sampled BIF
    # (64 chains × 400 draws, per-sample traces of 4 probe points) matches it to 15% in
    # Frobenius norm (6-8% over three seeds: MC error; SGLD bias ε·(Σ⁻¹ ≈ 5) ≈ 2%).
    g = torch.Generator().manual_seed(3)
    n, M, C = 400, 2, 64
    X = torch.randn(n, M, generator=g, dtype=torch.float64).float()
    Y = X @ torch.tensor([[1.0], [-2.0]]) + 0.7 * torch.randn(n, 1, generator=g)
    W = torch.linalg.lstsq(X, Y).solution.T  # [1, M]
    probe_x = torch.tensor([[1.5, 0.0], [0.0, 1.5], [1.0, 1.0], [2.0, -1.0]])
    probe_y = probe_x @ W.T + torch.tensor([[0.8], [-0.5], [0.3], [1.2]])
    nb, gamma = 4.0, 1.0
    target = from_functional(
        _linear, _mse, {"W": W.expand(C, 1, M).clone()}, X, Y, None,
        observables={"probe": (probe_x, probe_y)}, per_sample=["probe"],
    )  # fmt: skip
    est = estimate_llc(
        target, chains=C, nbetas=[nb], step_size=0.004, gamma=gamma, burnin=400,
        draws=400, thin=5, diagnose=False,
    )  # fmt: skip
    traces = est._gbc(est.result.sample_losses["probe"])[0, 0]  # [C, D, 4]
    got = bif(traces, kind="covariance")
    Xd, px = X.double(), probe_x.double()
    Sigma = torch.linalg.inv(nb * Xd.T @ Xd / n + gamma * torch.eye(M, dtype=torch.float64))
    s = px @ Sigma @ px.T
    r = (px @ W.T.double() - probe_y.double()).squeeze(1)
    want = (r[:, None] * r[None, :] * s + 0.5 * s**2).numpy()
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err < 0.15, (err, got, want)


def _devinterp():
    """devinterp 2.0.1's covariance helpers, or skip (not a dependency of grokbasin)."""
    return pytest.importorskip(
        "devinterp.slt.covariance", reason="devinterp 2.0.1 is not installed here (optional)"
    )


def test_bif_matches_devinterp_covariance_helpers() -> None:
    cov_mod = _devinterp()
    rng = np.random.default_rng(4)
    a = rng.normal(size=(3, 7, 5))  # C, D, m
    pooled = torch.from_numpy(a.reshape(21, 5).T.copy())  # [m, N]: devinterp's row layout
    want_corr = torch.corrcoef(pooled).numpy()
    want_cov = cov_mod.batch_cov(pooled[None], pooled[None])[0, 0, :5, :5].numpy()
    np.testing.assert_allclose(bif(a), want_corr, atol=1e-12)
    np.testing.assert_allclose(bif(a, kind="covariance"), want_cov, atol=1e-12)


# ------------------------------------------------------------------ along a built-in run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from grokbasin.config import build_config
    from grokbasin.train.runner import train

    cfg = build_config(
        {},
        {"task.p": 11, "model.width": 16, "train.epochs": 40, "train.checkpoint_every": 20,
         "train.batch_size": 16, "train.seeds": [0, 1]},
    )  # fmt: skip
    return train(cfg, tmp_path_factory.mktemp("infl"), progress=False).run


def _llc(**kw):
    from grokbasin.config import LLCConfig

    return LLCConfig(**{"chains": 2, "burnin": 3, "draws": 6, "batch_size": 16, **kw})


def test_influence_run_writes_resumes_and_recomputes(tiny_run) -> None:
    # stored results are the functions of the stored traces (1e-6, float32 storage); a rerun over
    # more checkpoints samples only the new one and leaves the old numbers bit-identical
    from grokbasin.llc.influence_run import estimate_influence
    from grokbasin.llc.subsets import subset_rows

    first = estimate_influence(tiny_run.path, _llc(checkpoints="0,20"), "val", progress=False)
    assert first.computed == [0, 20] and first.cached == []
    t1, meta = tiny_run.load_tensors(first.path)
    n = subset_rows(tiny_run_cfg(tiny_run), "train").shape[1]
    m = 11**2 - n
    assert t1["samples_train_20"].shape == (2, 2, 6, n) and t1["samples_probe_20"].shape[-1] == m
    assert t1["samples_probe_20"].dtype == torch.float32 and meta["probe"] == "val"
    assert meta["wall_s"] > 0
    assert first.trace_bytes == 4 * (2 * 2 * 2) * 6 * (n + m)
    tr, pr = t1["samples_train_20"].double().numpy(), t1["samples_probe_20"].double().numpy()
    want_bif = bif(tr, pr.mean(-1, keepdims=True), kind="influence")[..., 0]
    np.testing.assert_allclose(t1["bif_20"].numpy(), want_bif, rtol=1e-5, atol=1e-9)
    assert first.figure.read_bytes()[:4] == b"\x89PNG"

    again = estimate_influence(tiny_run.path, _llc(checkpoints="all"), "val", progress=False)
    assert again.computed == [40] and again.cached == [0, 20] and again.path == first.path
    t2, _ = tiny_run.load_tensors(again.path)
    for k, v in t1.items():
        assert torch.equal(t2[k], v), k
    assert "sus_40" in t2 and t2["sus_40"].shape == (2, m)


def tiny_run_cfg(run):
    from grokbasin.llc.trajectory import run_config

    return run_config(run)


def test_influence_cli_and_budget(tiny_run, run_cli, tmp_path) -> None:
    # the budget is checked before any sampling: one line naming the size and the setting
    rc, out, err = run_cli(
        ["llc", "influence", str(tiny_run.path), "--checkpoints", "40", "--trace-budget-mb",
         "0.001", "--chains", "2", "--draws", "6", "--burnin", "2", "--quiet"],
        tmp_path,
    )  # fmt: skip
    assert rc == 2
    assert "MiB" in err and "trace_budget_mb = 0.001" in err
    rc, out, err = run_cli(
        ["llc", "influence", str(tiny_run.path), "--probe", "class=3", "--checkpoints", "40",
         "--chains", "2", "--draws", "6", "--burnin", "2", "--quiet"],
        tmp_path,
    )  # fmt: skip
    assert rc == 0, err
    assert out.strip().splitlines()[-1].endswith(".png")
    rc, _, err = run_cli(["llc", "influence", str(tiny_run.path), "--probe", "class=99"], tmp_path)
    assert rc == 2 and "class=99" in err

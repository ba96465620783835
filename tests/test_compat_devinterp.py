"""grokbasin.compat.devinterp: devinterp 1.3.2's API with every chain in one batched call."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from grokbasin.compat.devinterp import (
    estimate_learning_coeff,
    estimate_learning_coeff_with_summary,
)
from grokbasin.device import intra_op_threads


def _evaluate_mse(model, data):
    x, y = data
    return F.mse_loss(model(x), y), {"output": model(x)}


def _mlp_data(n: int = 256, seed: int = 0):
    """A small trained tanh MLP (not the quadratic net) and its regression data."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    Y = torch.sin(X @ torch.randn(4, 1, generator=g)) + 0.1 * torch.randn(n, 1, generator=g)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(net(X), Y).backward()
        opt.step()
    return net, X, Y


def test_linear_regression_known_answer():
    """A regular model: λ̂ ≈ λ_Lap = ½ Σ nβμ/(nβμ + γ) ≈ d/2 (d = 4 parameters)."""
    g = torch.Generator().manual_seed(1)
    n = 256
    X = torch.randn(n, 3, generator=g)
    Y = X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 * torch.randn(n, 1, generator=g)
    A = torch.cat([X, torch.ones(n, 1)], 1).double()
    sol = torch.linalg.lstsq(A, Y.double()).solution  # w* at the exact minimum
    net = torch.nn.Linear(3, 1)
    with torch.no_grad():
        net.weight.copy_(sol[:3].T.float())
        net.bias.copy_(sol[3].float())
    nbeta, gamma = 50.0, 1.0
    mu = np.linalg.eigvalsh((2 * A.T @ A / n).numpy())  # Hessian of the MSE
    lap = 0.5 * float(np.sum(nbeta * mu / (nbeta * mu + gamma)))
    loader = DataLoader(TensorDataset(X, Y), batch_size=n)  # full batch: no minibatch noise
    out = estimate_learning_coeff_with_summary(
        net, loader, evaluate=_evaluate_mse,
        optimizer_kwargs={"lr": 5e-4, "localization": gamma, "nbeta": nbeta},
        num_chains=8, num_draws=400, num_burnin_steps=200, seed=0, verbose=False,
    )  # fmt: skip
    se = out["llc/std"] / math.sqrt(8)
    assert abs(out["llc/mean"] - lap) < 0.1 * lap + 3 * se, (out["llc/mean"], lap, se)
    chains = np.array([out[f"llc-chain/{i}"] for i in range(8)])
    assert out["llc/mean"] == pytest.approx(chains.mean()) and out["loss/trace"].shape == (8, 400)
    assert out["llc/std"] == pytest.approx(chains.std(ddof=1), rel=1e-5)


def test_same_keys_shapes_and_init_loss_as_devinterp():
    """Key for key, shape for shape, and the same default init_loss as devinterp 1.3.2."""
    di = pytest.importorskip("devinterp.slt.sampler")
    from devinterp.optim.sgld import SGLD

    net, X, Y = _mlp_data(64)
    loader = DataLoader(TensorDataset(X, Y), batch_size=16)  # unshuffled: same first batches
    kw = {
        "evaluate": _evaluate_mse,
        "optimizer_kwargs": {"lr": 1e-4, "localization": 10.0, "nbeta": 20.0},
        "num_chains": 2,
        "num_draws": 5,
        "verbose": False,
        "seed": 3,
    }
    for online in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = di.estimate_learning_coeff_with_summary(
                net, loader, sampling_method=SGLD, online=online, **{**kw, "optimizer_kwargs":
                dict(kw["optimizer_kwargs"])},
            )  # fmt: skip
        ours = estimate_learning_coeff_with_summary(
            net, loader, sampling_method=SGLD, online=online, **kw
        )
        assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
        for k, v in theirs.items():
            assert np.shape(ours[k]) == np.shape(v), k
        if online:
            assert ours["init_loss"] == pytest.approx(theirs["init_loss"], rel=1e-6)


def test_one_and_two_workers_agree_and_bad_arguments():
    net, X, Y = _mlp_data(64)
    loader = DataLoader(TensorDataset(X, Y), batch_size=16)
    kw = {
        "evaluate": _evaluate_mse,
        "optimizer_kwargs": {"lr": 1e-3, "localization": 10.0, "nbeta": 20.0},
        "num_chains": 4,
        "num_draws": 20,
        "num_burnin_steps": 10,
        "seed": 5,
    }
    with intra_op_threads("cpu", 1):
        one = estimate_learning_coeff_with_summary(net, loader, **kw)
    with intra_op_threads("cpu", 2):
        two = estimate_learning_coeff_with_summary(net, loader, **kw)
    np.testing.assert_allclose(two["loss/trace"], one["loss/trace"], rtol=1e-6)
    assert estimate_learning_coeff(net, loader, **kw) == pytest.approx(one["llc/mean"])
    with pytest.raises(ValueError, match="callbacks"):
        estimate_learning_coeff_with_summary(net, loader, callbacks=[print], **kw)
    with pytest.raises(ValueError, match="sampling_method"):
        estimate_learning_coeff_with_summary(net, loader, sampling_method="adam", **kw)


@pytest.mark.slow
def test_agrees_with_devinterp_on_a_small_mlp():
    """Same model, loader and sampler settings: means within 3 combined standard errors + 10%."""
    di = pytest.importorskip("devinterp.slt.sampler")
    from devinterp.optim.sgld import SGLD

    net, X, Y = _mlp_data(256)
    loader = DataLoader(TensorDataset(X, Y), batch_size=64, shuffle=True)
    C = 8
    kw = {
        "evaluate": _evaluate_mse,
        "num_chains": C,
        "num_draws": 150,
        "num_burnin_steps": 150,
        "verbose": False,
        "seed": 1,
    }
    opt = {"lr": 1e-3, "localization": 10.0, "nbeta": 20.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = di.estimate_learning_coeff_with_summary(
            net, loader, sampling_method=SGLD, optimizer_kwargs=dict(opt), **kw
        )
    ours = estimate_learning_coeff_with_summary(
        net, loader, sampling_method=SGLD, optimizer_kwargs=dict(opt), **kw
    )
    se = math.hypot(theirs["llc/std"], ours["llc/std"]) / math.sqrt(C)
    gap = abs(ours["llc/mean"] - theirs["llc/mean"])
    assert gap <= 3 * se + 0.1 * abs(theirs["llc/mean"]), (ours["llc/mean"], theirs["llc/mean"], se)

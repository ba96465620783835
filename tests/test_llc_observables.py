"""Observables and per-sample loss traces recorded at every draw (``llc.observables``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.targets import from_functional, from_modular, from_module
from grokbasin.losses import LOSSES, PER_SAMPLE_LOSSES


def _linear(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.bmm(x, params["W"].transpose(1, 2))


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (pred - y).square().sum(-1).mean(-1)


def _regression(n: int = 200, M: int = 4, N: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, M, generator=g)
    Y = X @ torch.randn(N, M, generator=g).T + 0.5 * torch.randn(n, N, generator=g)
    W_hat = torch.linalg.lstsq(X, Y).solution.T
    return X, Y, W_hat


def _run(target, chains: int, **kw):
    args = {"chains": chains, "nbetas": [50.0], "step_size": 1e-3, "burnin": 5, "draws": 12}
    return estimate_llc(target, diagnose=False, **{**args, **kw}).result


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_per_sample_losses_average_to_the_loss(loss: str) -> None:
    # the per-sample terms are a decomposition: their mean is the built-in loss (float32, 1e-6)
    g = torch.Generator().manual_seed(0)
    pred, labels = torch.randn(3, 17, 5, generator=g), torch.randint(0, 5, (3, 17), generator=g)
    per = PER_SAMPLE_LOSSES[loss](pred, labels)
    assert per.shape == (3, 17)
    torch.testing.assert_close(per.mean(1), LOSSES[loss](pred, labels), rtol=1e-6, atol=1e-6)


def test_observable_on_the_training_set_is_the_full_batch_trace() -> None:
    # full-batch sampling: the draw loss IS the training loss at the draw's parameters, so an
    # observable on the training set must equal the trace (same parameters, same data): 1e-6
    X, Y, W = _regression()
    C = 3
    target = from_functional(
        _linear, _mse, {"W": W.expand(C, *W.shape).clone()}, X, Y, None,
        observables={"train": (X, Y), "half": (X[:50], Y[:50])}, per_sample=["half"],
    )  # fmt: skip
    res = _run(target, C)
    assert res.observables["train"].shape == (C, 12)
    np.testing.assert_allclose(res.observables["train"], res.traces, rtol=1e-6)
    # per-sample traces [R, draws, m] average to the observable's mean loss
    assert res.sample_losses["half"].shape == (C, 12, 50)
    assert res.sample_losses["half"].dtype == np.float32
    np.testing.assert_allclose(res.sample_losses["half"].mean(-1), res.observables["half"], 1e-5)
    # at w* the observable is the full training loss
    np.testing.assert_allclose(res.observables_init["train"], res.full_init_loss, rtol=1e-6)


def test_observables_do_not_change_the_chains() -> None:
    # observables are read-only: the sampling traces are bit-identical with and without them
    X, Y, W = _regression()
    C = 2
    p0 = {"W": W.expand(C, *W.shape).clone()}
    plain = _run(from_functional(_linear, _mse, p0, X, Y, 40), C)
    obs = _run(from_functional(_linear, _mse, p0, X, Y, 40, observables={"v": (X, Y)}), C)
    np.testing.assert_array_equal(plain.traces, obs.traces)
    assert plain.observables is None and plain.sample_losses is None


def test_sharding_slices_observables() -> None:
    # per-replica observable data is cut with the replicas: 1 and 3 CPU shards agree exactly
    X, Y, W = _regression()
    C = 6
    Xr = X.expand(C, *X.shape).clone()
    Yr = Y.expand(C, *Y.shape).clone()
    Xv = Xr[:, :30] + torch.arange(C, dtype=torch.float32)[:, None, None]  # differs per replica
    target = from_functional(
        _linear, _mse, {"W": W.expand(C, *W.shape).clone()}, Xr, Yr, 50, per_replica=True,
        observables={"v": (Xv, Yr[:, :30])}, per_sample=["v"],
    )  # fmt: skip
    one, three = _run(target, C, cpu_workers=1), _run(target, C, cpu_workers=3)
    np.testing.assert_array_equal(one.sample_losses["v"], three.sample_losses["v"])
    np.testing.assert_array_equal(one.observables["v"], three.observables["v"])
    # replica r's observable used its own shifted inputs: direct evaluation at w*, 1e-5
    pred = torch.bmm(Xv, W.T.expand(C, *W.T.shape))
    want = _mse(pred, Yr[:, :30]).double().numpy()
    np.testing.assert_allclose(one.observables_init["v"], want, rtol=1e-5)


def test_trace_budget_refused_before_sampling() -> None:
    X, Y, W = _regression()
    C = 4
    target = from_functional(
        _linear, _mse, {"W": W.expand(C, *W.shape).clone()}, X, Y, 50,
        observables={"v": (X, Y)}, per_sample=["v"],
    )  # fmt: skip
    # 4 chains × 1000 draws × 200 samples × 4 B = 3.05 MiB > 1 MiB
    with pytest.raises(ValueError, match=r"3\.1 MiB .* above trace_budget_mb = 1") as err:
        _run(target, C, draws=1000, trace_budget_mb=1.0)
    assert "\n" not in str(err.value)


def test_unknown_per_sample_name_is_refused() -> None:
    X, Y, W = _regression()
    with pytest.raises(ValueError, match=r"per_sample names \['val'\]"):
        from_functional(_linear, _mse, {"W": W[None]}, X, Y, per_sample=["val"])


def test_from_module_observables_match_direct_evaluation() -> None:
    # the module's observable at w* equals the loss of the module on that data (1e-6), and the
    # per-sample losses average to the draw means
    torch.manual_seed(0)
    X, Y, _ = _regression(n=60)
    net = torch.nn.Linear(4, 2)

    def loss_fn(pred, y):
        return torch.nn.functional.mse_loss(pred, y)

    target = from_module(
        net, loss_fn, X, Y, replicas=2, batch_size=20,
        observables={"val": (X[:25], Y[:25])}, per_sample=["val"],
    )  # fmt: skip
    res = _run(target, 2, step_size=1e-4)
    with torch.no_grad():
        want = float(loss_fn(net(X[:25]), Y[:25]))
    np.testing.assert_allclose(res.observables_init["val"], [want, want], rtol=1e-6)
    np.testing.assert_allclose(res.sample_losses["val"].mean(-1), res.observables["val"], 1e-5)


def test_modular_val_observable_is_the_held_out_loss(tiny_cfg) -> None:
    # built-in run: observable "val" at w* equals the model's loss on each replica's held-out
    # pairs computed directly (1e-6), and "train" with full-batch sampling equals the trace
    from grokbasin.llc.subsets import subset_rows
    from grokbasin.models import build_model
    from grokbasin.rng import key
    from grokbasin.tasks.modular import all_pairs

    cfg = tiny_cfg(**{"train.seeds": [0, 1]})
    model = build_model(cfg.model, cfg.task.p, cfg.task.p)
    params = model.init(key([3, 4]))  # two replicas, like the two seeds
    train, val = subset_rows(cfg, "train"), subset_rows(cfg, "val")
    n = train.shape[1]
    target = from_modular(
        cfg, params, train, n, observables={"train": train, "val": val}, per_sample=["val"]
    )
    res = _run(target, 1, nbetas=[20.0], groups=2, step_size=1e-5)
    x, y = all_pairs(cfg.task.p, cfg.task.op)
    want = LOSSES[cfg.train.loss](model.forward(params, x[val]), y[val]).double().numpy()
    np.testing.assert_allclose(res.observables_init["val"], want, rtol=1e-6)
    np.testing.assert_allclose(res.observables["train"], res.traces, rtol=1e-5)
    assert res.sample_losses["val"].shape == (2, 12, val.shape[1])
    assert math.isclose(val.shape[1] + n, cfg.task.p**2)


# ------------------------------------------------------------------ data-refined LLC


@pytest.mark.parametrize("subset", [slice(None), slice(0, 400)])
def test_data_refined_llc_of_regular_regression_is_d_over_2(subset: slice) -> None:
    # noiseless well-specified regression: every subset has the same exact minimum W_true and a
    # positive-definite Hessian, so the data-refined LLC (posterior loss on the subset, n = its
    # size, nβ = n/ln n) is d/2 = 5 on the full set and on a 400-sample subset. ε·nβ·μ ≈ 0.02
    # (≈1% bias, mixing ≈ 100 steps); tolerance 10% of d/2, MC error ≈ 3%.
    g = torch.Generator().manual_seed(2)
    n, M, N, C = 1200, 5, 2, 16
    X = torch.randn(n, M, generator=g)
    W = torch.randn(N, M, generator=g)
    Xs, Ys = X[subset], (X @ W.T)[subset]
    ns = Xs.shape[0]
    target = from_functional(_linear, _mse, {"W": W.expand(C, N, M).clone()}, Xs, Ys, 200)
    nb = ns / math.log(ns)
    est = estimate_llc(
        target, chains=C, nbetas=[nb], step_size=0.02 / nb, gamma=1.0,
        burnin=150, draws=300, diagnose=False,
    )  # fmt: skip
    assert float(est.llc_mean[0, 0]) == pytest.approx(M * N / 2, rel=0.10)


def test_trajectory_data_refined_on_held_out_pairs(tmp_path) -> None:
    # llc.data = "val": the posterior's loss is on each replica's held-out pairs, so the stored
    # L(w*) is the checkpoint's held-out loss (1e-6) and nβ = n/ln n uses the held-out count;
    # the plain LLC's sampler hash is unchanged by the new field
    from grokbasin.config import LLCConfig, build_config
    from grokbasin.llc.subsets import subset_rows
    from grokbasin.llc.trajectory import estimate_runs
    from grokbasin.models import build_model
    from grokbasin.store.rundir import read_parquet
    from grokbasin.tasks.modular import all_pairs
    from grokbasin.train.runner import train

    cfg = build_config(
        {},
        {"task.p": 11, "model.width": 16, "train.epochs": 20, "train.checkpoint_every": 20,
         "train.batch_size": 16, "train.seeds": [0, 1]},
    )  # fmt: skip
    run = train(cfg, tmp_path, progress=False).run
    base = dict(chains=2, burnin=3, draws=5, batch_size=16, step_size=1e-5, checkpoints="last")
    plain, refined = LLCConfig(**base), LLCConfig(**base, data="val", nbeta="n_over_log_n")
    assert plain.sampler_hash() == LLCConfig(**base, data="train").sampler_hash()
    assert refined.sampler_hash() != plain.sampler_hash()
    estimate_runs([run.path], refined, progress=False)
    rows = sorted(read_parquet(run.llc).to_pylist(), key=lambda r: (r["replica"], r["chain"]))
    val = subset_rows(cfg, "val")
    ck = run.load_checkpoint(20, "cpu")
    x, y = all_pairs(cfg.task.p, cfg.task.op)
    model = build_model(cfg.model, cfg.task.p, cfg.task.p)
    want = LOSSES[cfg.train.loss](model.forward(ck, x[val]), y[val]).double().numpy()
    got = np.array([r["init_loss"] for r in rows]).reshape(2, 2)
    np.testing.assert_allclose(got, want[:, None].repeat(2, 1), rtol=1e-6)
    m = val.shape[1]
    assert rows[0]["nbeta"] == pytest.approx(m / math.log(m), rel=1e-12)
    assert '"data": "val"' in rows[0]["sampler_config"]


def test_unknown_subset_is_refused() -> None:
    from grokbasin.config import LLCConfig
    from grokbasin.errors import ConfigError

    with pytest.raises(ConfigError, match=r"subset 'test' is not one of train \| val"):
        LLCConfig(data="test")


def test_quadratic_observables_fast_forward_matches_the_model(tiny_cfg) -> None:
    # the quadratic net's observables use the gradient's layout (fast_quadratic.forward_rows);
    # they equal the reference model forward's (fast=False) to float rounding (1e-5)
    from grokbasin.llc.subsets import subset_rows
    from grokbasin.models import build_model
    from grokbasin.rng import key

    cfg = tiny_cfg(**{"train.seeds": [0, 1], "train.loss": "cross_entropy"})
    params = build_model(cfg.model, cfg.task.p, cfg.task.p).init(key([5, 6]))
    train, val = subset_rows(cfg, "train"), subset_rows(cfg, "val")
    kw = {
        "observables": {"val": val, "class=2": subset_rows(cfg, "class=2")},
        "per_sample": ["val"],
    }
    fast = from_modular(cfg, params, train, 8, **kw)
    ref = from_modular(cfg, params, train, 8, fast=False, **kw)
    with torch.no_grad():
        (fm, fs), (rm, rs) = fast.observe(params), ref.observe(params)
    for k in rm:
        torch.testing.assert_close(fm[k], rm[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fs["val"], rs["val"], rtol=1e-5, atol=1e-6)
    assert rm["class=2"].shape == (2,)

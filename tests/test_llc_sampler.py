"""SGLD kernel and estimator mechanics: the exact devinterp update, replica independence,
restricted sampling, divergence handling, torch.func module targets, other samplers, MALA,
temperature regression and the minibatch stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grokbasin import rng
from grokbasin.llc import samplers
from grokbasin.llc.estimate import estimate_llc, sample, temperature_regression
from grokbasin.llc.samplers import sgld
from grokbasin.llc.targets import Minibatcher, from_functional, from_module, from_potential


def _linear(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.bmm(x, params["W"].transpose(1, 2)) + params["b"][:, None, :]


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (pred - y).square().sum(-1).mean(-1)


def _data(n: int = 64, M: int = 3, N: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, M, generator=g)
    return X, X @ torch.randn(N, M, generator=g).T + 0.1 * torch.randn(n, N, generator=g)


def test_sgld_step_is_devinterp_update() -> None:
    # Δw = −(ε/2)(nβ∇L + γ(w − w*) + ω w) + √ε σ ξ with per-replica hyperparameters;
    # float32 arithmetic on O(1) numbers: tolerance 1e-6.
    R = 3
    keys = rng.key([5, 6, 7])
    w = {"a": torch.randn(R, 4), "b": torch.randn(R, 2, 2)}
    c = {k: v + 0.1 for k, v in w.items()}
    g = {k: torch.randn_like(v) for k, v in w.items()}
    h = samplers.make_hyper(
        R, [1e-3, 2e-3, 3e-3], [10.0, 20.0, 30.0], [1.0, 2.0, 3.0], [0.0, 0.1, 0.2], [1.0, 0.5, 2.0]
    )
    setup = samplers.Setup(c, h, keys, tuple(sorted(w)), norms=True)
    state, info = sgld.step(sgld.init(dict(w), setup), g, 4)
    new, norms = state.params, info["norms"]
    xi = samplers.noise(keys, 4, w)
    for k in w:
        v = (-1,) + (1,) * (w[k].dim() - 1)
        eps, nb, gam = h.step_size.view(v), h.nbeta.view(v), h.gamma.view(v)
        wd, sig = h.weight_decay.view(v), h.noise_level.view(v)
        drift = 0.5 * eps * (nb * g[k] + gam * (w[k] - c[k]) + wd * w[k])
        want = w[k] - drift + eps.sqrt() * sig * xi[k]
        torch.testing.assert_close(new[k], want, rtol=1e-6, atol=1e-6)
    half = 0.5 * h.step_size * h.nbeta
    grad_norm = torch.sqrt(sum((g[k].reshape(R, -1) * half[:, None]).square().sum(1) for k in g))
    torch.testing.assert_close(norms["grad"], grad_norm, rtol=1e-5, atol=1e-7)
    dist = torch.sqrt(sum((w[k] - c[k]).reshape(R, -1).square().sum(1) for k in w))
    torch.testing.assert_close(norms["distance"], dist, rtol=1e-5, atol=1e-7)


def test_batched_traces_equal_one_at_a_time() -> None:
    # 3 groups × 2 temperatures × 2 chains together vs each group alone with the same ids:
    # identical streams, so traces agree to float32 round-off of different batch shapes (1e-5).
    X, Y = _data()
    G, C, nbs = 3, 2, [20.0, 40.0]
    base = {"W": torch.randn(G, 2, 3) * 0.3, "b": torch.zeros(G, 2)}
    rep = {k: v.repeat_interleave(len(nbs) * C, 0) for k, v in base.items()}
    kw = dict(
        chains=C, nbetas=nbs, step_size=1e-3, gamma=1.0, burnin=5, draws=20, seed=11, diagnose=False
    )
    all_ = estimate_llc(
        from_functional(_linear, _mse, rep, X, Y, 16),
        groups=G,
        group_ids=[[g] for g in range(G)],
        **kw,
    )
    for g in range(G):
        one = {k: v[g : g + 1].repeat_interleave(len(nbs) * C, 0) for k, v in base.items()}
        alone = estimate_llc(
            from_functional(_linear, _mse, one, X, Y, 16), groups=1, group_ids=[[g]], **kw
        )
        np.testing.assert_allclose(
            all_.result.traces.reshape(G, -1, 20)[g], alone.result.traces, rtol=1e-5, atol=1e-7
        )


def test_restricted_llc_keeps_other_parameters_at_centre() -> None:
    # names=["W"]: b never moves (exact equality); a mask freezes W's first row (exact).
    X, Y = _data()
    p0 = {"W": torch.randn(4, 2, 3), "b": torch.randn(4, 2)}
    mask = {"W": torch.tensor([[0.0], [1.0]]).expand(2, 3)}
    t = from_functional(_linear, _mse, p0, X, Y, 16, names=["W"], masks=mask)
    keys = rng.key([0, 1, 2, 3])
    h = samplers.make_hyper(4, 1e-3, 10.0, 1.0)
    res = sample(t, h, keys, burnin=0, draws=5, record_norms=True)
    assert res.norms is not None and (res.norms["distance"][:, -1] > 0).all()
    # replay the first 5 steps by hand to see the parameters
    setup = samplers.Setup(p0, h, keys, ("W",), t.masks)
    state = sgld.init({k: v.clone() for k, v in p0.items()}, setup)
    b = t.batcher(keys)
    for step in range(5):
        _, grads = t.loss_and_grad(state.params, b(step))
        assert set(grads) == {"W"}
        state, _ = sgld.step(state, grads, step)
    params = state.params
    assert torch.equal(params["b"], p0["b"])
    assert torch.equal(params["W"][:, 0], p0["W"][:, 0])
    assert not torch.equal(params["W"][:, 1], p0["W"][:, 1])


def test_diverged_chain_is_frozen_and_others_unaffected() -> None:
    # replica 0 gets a step size far past stability and blows up to inf/NaN; the run must not
    # crash, replica 0 is marked diverged with NaN draws, and replicas 1-2 are bit-identical
    # to a run without it (tolerance 0: same streams, elementwise maths).
    R = 3
    p0 = {"w": torch.ones(R, 2)}
    pot = lambda p: p["w"].pow(4).sum(1)  # noqa: E731
    keys = rng.key([0, 1, 2])
    h = samplers.make_hyper(R, [5.0, 1e-3, 1e-3], 100.0, 1.0)
    res = sample(from_potential(pot, p0), h, keys, burnin=2, draws=10)
    assert res.diverged.tolist() == [True, False, False]
    assert np.isnan(res.traces[0]).any() and np.isfinite(res.traces[1:]).all()
    sub = sample(
        from_potential(pot, {"w": torch.ones(2, 2)}),
        h.subset(torch.tensor([1, 2])),
        keys[1:],
        burnin=2,
        draws=10,
    )
    np.testing.assert_array_equal(res.traces[1:], sub.traces)


def test_module_target_gradients_match_autograd() -> None:
    # torch.func target: each replica's loss and gradient equal plain autograd on that replica's
    # own nn.Linear (float32, tolerance 1e-5); then a short estimate runs and is finite.
    X, Y = _data()
    net = torch.nn.Linear(3, 2)
    R = 2
    p0 = {k: v.detach()[None].repeat(R, *[1] * v.dim()) for k, v in net.named_parameters()}
    p0["weight"][1] += 0.5
    t = from_module(net, torch.nn.functional.mse_loss, X, Y, replicas=R, batch_size=16, params0=p0)
    idx = torch.stack([torch.arange(16), torch.arange(16, 32)])
    loss, grads = t.loss_and_grad(p0, idx)
    for r in range(R):
        ref = torch.nn.Linear(3, 2)
        with torch.no_grad():
            ref.weight.copy_(p0["weight"][r])
            ref.bias.copy_(p0["bias"][r])
        lr = torch.nn.functional.mse_loss(ref(X[idx[r]]), Y[idx[r]])
        lr.backward()
        assert float(loss[r].detach()) == pytest.approx(float(lr.detach()), rel=1e-5)
        torch.testing.assert_close(grads["weight"][r], ref.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads["bias"][r], ref.bias.grad, rtol=1e-5, atol=1e-6)
    full = t.full_loss(p0)
    assert full.shape == (R,) and torch.isfinite(full).all()
    kw = dict(
        chains=4, nbetas=[20.0], step_size=1e-4, gamma=1.0, burnin=5, draws=10, diagnose=False
    )
    est = estimate_llc(
        from_module(net, torch.nn.functional.mse_loss, X, Y, replicas=4, batch_size=16), **kw
    )
    assert np.isfinite(est.llc).all()
    # torch.func transforms also run in the sampler's worker threads (2 shards): same traces
    two = estimate_llc(
        from_module(net, torch.nn.functional.mse_loss, X, Y, replicas=4, batch_size=16),
        cpu_workers=2,
        **kw,
    )
    np.testing.assert_allclose(two.result.traces, est.result.traces, rtol=1e-5)


@pytest.mark.parametrize(("method", "eps"), [("rmsprop_sgld", 1e-4), ("sgnht", 1e-3)])
def test_other_samplers_on_a_regular_quadratic(method: str, eps: float) -> None:
    # U = nβ·½Σ h_i w_i², d = 4: λ = d/2 = 2. RMSprop's preconditioner ≈ 1/eps_rms = 10 at these
    # tiny gradients, so its ε is 10× smaller. Tolerance 15% (discretisation + MC error ≈ 5%).
    C = 64
    hdiag = torch.tensor([1.0, 2.0, 0.5, 1.5])
    t = from_potential(lambda p: 0.5 * (hdiag * p["w"] ** 2).sum(1), {"w": torch.zeros(C, 4)})
    est = estimate_llc(
        t,
        chains=C,
        nbetas=[100.0],
        step_size=eps,
        gamma=0.0,
        burnin=200,
        draws=400,
        method=method,
        diagnose=False,
    )
    assert float(est.llc_mean[0, 0]) == pytest.approx(2.0, rel=0.15)


def test_mala_acceptance_drops_with_step_size() -> None:
    # small ε on a quadratic: nearly exact Langevin (acceptance > 0.95); 30× larger ε: lower.
    C = 16
    t = from_potential(lambda p: 0.5 * (p["w"] ** 2).sum(1), {"w": torch.zeros(C, 4)})
    keys = rng.key(list(range(C)))
    acc = []
    for eps in (1e-4, 3e-3):
        res = sample(t, samplers.make_hyper(C, eps, 100.0, 0.0), keys, 50, 100, mala=True)
        acc.append(float(res.mala_accept.mean()))
    assert acc[0] > 0.95 and acc[1] < acc[0] - 0.02


def test_temperature_regression_recovers_slope() -> None:
    # synthetic n(Ē − L*) = λ/β + c exactly: the slope is λ to round-off (1e-9); plain estimates
    # are biased by c·nβ/n.
    n, lam, c = 1000, 7.5, 3.0
    nb = np.array([50.0, 100.0, 200.0])
    mean = 0.1 + (lam / (nb / n) + c) / n
    slope, icpt = temperature_regression(mean, np.full(3, 0.1), nb, n)
    assert float(slope) == pytest.approx(lam, abs=1e-9)
    assert float(icpt) == pytest.approx(c, abs=1e-9)


def test_minibatches_cover_each_sample_once_per_epoch() -> None:
    # without replacement within an epoch, different orders per replica and per epoch (exact)
    mb = Minibatcher(rng.key([0, 1]), n=12, batch_size=4)
    epoch0 = torch.cat([mb(s) for s in range(3)], dim=1)
    assert (epoch0.sort(dim=1).values == torch.arange(12)).all()
    assert not torch.equal(epoch0[0], epoch0[1])
    assert not torch.equal(torch.cat([mb(s) for s in range(3, 6)], dim=1), epoch0)


def test_minibatch_epochs_do_not_depend_on_how_they_are_drawn() -> None:
    # Permutations are hashed for blocks of epochs; epoch e must be permutation(fold_in(key, e))
    # whichever block it falls in, including past a block boundary (exact equality).
    keys = rng.key([3, 4, 5])
    mb = Minibatcher(keys, n=10, batch_size=5, max_elems=3 * 10 * 4)  # blocks of 4 epochs
    assert mb.block == 4
    ref = rng.fold_in(keys, 0xBA7C)
    for epoch in (0, 3, 4, 9, 2):  # forwards across blocks, then back to an earlier block
        want = rng.permutation(rng.fold_in(ref, epoch), 10)
        got = torch.cat([mb(2 * epoch), mb(2 * epoch + 1)], dim=1)
        assert torch.equal(got, want)


def test_devinterp_baseline_and_wbic() -> None:
    # baseline='devinterp' uses the chain's first minibatch loss at w*; WBIC = n·mean loss (exact)
    X, Y = _data()
    p0 = {"W": torch.zeros(2, 2, 3), "b": torch.zeros(2, 2)}
    t = from_functional(_linear, _mse, p0, X, Y, 8)
    h = samplers.make_hyper(2, 1e-4, 10.0, 1.0)
    res = sample(t, h, rng.key([0, 1]), 3, 5, baseline="devinterp")
    np.testing.assert_array_equal(res.init_loss, res.first_batch_loss)
    assert not np.allclose(res.first_batch_loss, res.full_init_loss)
    np.testing.assert_allclose(res.wbic, 64 * res.traces.mean(1))
    np.testing.assert_allclose(res.running[:, -1], res.llc)


def test_state_ownership_is_explicit() -> None:
    # A reference kernel leaves the state it was given untouched and returns a new one; an
    # in-place kernel (the flag says which) returns the same object with the given tensors moved,
    # so stepping a kept state again would silently continue the chain. snapshot() keeps one.
    R = 2
    w = {"a": torch.randn(R, 3), "b": torch.randn(R, 2, 2)}
    g = {k: torch.randn_like(v) for k, v in w.items()}
    h = samplers.make_hyper(R, 1e-2, 10.0, 1.0)
    setup = samplers.Setup({k: v.clone() for k, v in w.items()}, h, rng.key([1, 2]), ("a", "b"))
    methods = [k for m in samplers.METHODS for k in samplers.kernels_of(m)]
    assert {k.name for k in methods if k.in_place} == {"sgld/fused-cpu", "sgld/fused-torch"}
    assert (
        samplers.mala.wrap(sgld.FUSED_TORCH).in_place
        and not samplers.mala.wrap(sgld.REFERENCE).in_place
    )
    for kernel in methods:
        if not kernel.applies(w, setup):
            continue
        state = kernel.init({k: v.clone() for k, v in w.items()}, setup)
        kept = samplers.snapshot(state)
        before = {k: v.clone() for k, v in state.params.items()}
        new, _ = kernel.step(state, g, 0)
        moved = any(not torch.equal(new.params[k], before[k]) for k in w)
        assert moved, kernel.name
        if kernel.in_place:
            assert new is state and not torch.equal(state.params["a"], before["a"]), kernel.name
        else:
            assert new is not state, kernel.name
            for k in w:
                assert torch.equal(state.params[k], before[k]), kernel.name
        for k in w:  # the snapshot is unaffected either way
            assert torch.equal(kept.params[k], before[k]), kernel.name

"""The LLC fast path equals the reference path: hand-written quadratic-net gradients vs autograd,
the fused in-place SGLD update vs sgld.step, the SplitMix64 normal stream vs a pure-Python
reference, and whole sampler runs (traces and λ̂) fast vs reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grokbasin import rng
from grokbasin.config import build_config
from grokbasin.llc import samplers
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.fast_quadratic import QuadraticGrad
from grokbasin.llc.samplers import sgld
from grokbasin.llc.targets import from_modular, modular_train_rows
from grokbasin.models import build_model
from grokbasin.tasks.modular import all_pairs


def _setup(loss: str = "centred_mse", R: int = 3, p: int = 11, K: int = 16):
    over = {"task.p": p, "model.width": K, "train.loss": loss, "train.batch_size": 16}
    cfg = build_config({}, over)
    params = build_model(cfg.model, p, p).init(rng.key(list(range(R))))
    rows = modular_train_rows(cfg).expand(R, -1).contiguous()
    return cfg, params, rows


@pytest.mark.parametrize("loss", ["centred_mse", "cross_entropy"])
def test_fast_gradients_equal_autograd(loss: str) -> None:
    # Same maths in a different order of float32 operations: rtol 1e-5, atol 1e-6.
    cfg, params, rows = _setup(loss)
    fast = from_modular(cfg, params, rows, 8)
    ref = from_modular(cfg, params, rows, 8, fast=False)
    assert isinstance(fast.loss_and_grad, QuadraticGrad)
    idx = rng.permutation(rng.key([1, 2, 3]), rows.shape[1])[:, :8]
    lf, gf = fast.loss_and_grad(params, idx)
    lr, gr = ref.loss_and_grad(params, idx)
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-6)
    assert set(gf) == {"V", "W"}
    for k in gr:
        torch.testing.assert_close(gf[k], gr[k], rtol=1e-5, atol=1e-6)
    x, y = all_pairs(cfg.task.p, cfg.task.op)
    for use_kernels in (True, False):  # compiled gather/scatter, and the torch ops they replace
        blocks = QuadraticGrad(x, y, rows, cfg.task.p, loss, chunk=2, use_kernels=use_kernels)
        lb, gb = blocks(params, idx)  # replicas in blocks of 2, 1
        assert (blocks._kernels(params["W"].reshape(-1, 16), None) is not None) == use_kernels
        torch.testing.assert_close(lb, lr, rtol=1e-5, atol=1e-6)
        for k in gr:
            torch.testing.assert_close(gb[k], gr[k], rtol=1e-5, atol=1e-6)
    out = {k: torch.full_like(v, 7.0) for k, v in params.items()}  # stale values are overwritten
    _, gi = fast.loss_and_grad(params, idx, out)
    for k in gr:
        assert gi[k].data_ptr() == out[k].data_ptr()
        torch.testing.assert_close(out[k], gr[k], rtol=1e-5, atol=1e-6)


def test_fast_gradients_restricted_to_named_parameters() -> None:
    # Restricted LLC over W only: only W's gradient, equal to autograd's (rtol 1e-5).
    cfg, params, rows = _setup()
    fast = from_modular(cfg, params, rows, 8, names=["W"])
    ref = from_modular(cfg, params, rows, 8, names=["W"], fast=False)
    idx = torch.arange(8).expand(3, -1)
    gf, gr = fast.loss_and_grad(params, idx)[1], ref.loss_and_grad(params, idx)[1]
    assert set(gf) == {"W"}
    torch.testing.assert_close(gf["W"], gr["W"], rtol=1e-5, atol=1e-6)


def _splitmix_reference(key: int, counter: int, i: int) -> int:
    """SplitMix64 in Python integers: block start mix64(key·2³² + counter), element i."""
    mask = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    start = mix(((key & 0xFFFFFFFF) << 32) | counter)
    return mix((start + i * 0x9E3779B97F4A7C15) & mask)


def test_normal_stream_is_splitmix64_box_muller() -> None:
    # Bit-exact hash vs pure Python; Box–Muller values to float32 round-off (atol 1e-5).
    keys = rng.key([3, 4])
    n = 11
    z = rng.normal_pairs(keys, 5, n)
    m = (n + 1) // 2
    for r in range(2):
        for i in range(m):
            word = _splitmix_reference(int(keys[r]), 5, i)
            u1 = ((word >> 32) + 0.5) * 2.0**-32
            u2 = ((word & 0xFFFFFFFF) + 0.5) * 2.0**-32
            rad, angle = math.sqrt(-2.0 * math.log(u1)), 2 * math.pi * (u2 - 0.5)
            assert z[r, i].item() == pytest.approx(rad * math.cos(angle), abs=1e-5)
            if m + i < n:
                assert z[r, m + i].item() == pytest.approx(rad * math.sin(angle), abs=1e-5)


def test_normal_stream_is_per_replica_and_standard_normal() -> None:
    # A replica's values depend on its key and counter only (exact equality); 256k values have
    # mean 0 ± 0.01, variance 1 ± 0.01, kurtosis 3 ± 0.05 (all > 4 standard errors), the CDF at
    # −4…4 within 5 binomial standard deviations of Φ, and
    # neighbouring values and the two halves of a pair are uncorrelated (|r| < 0.01).
    keys = rng.key(list(range(64)))
    z = rng.normal_pairs(keys, 9, 4000)
    assert torch.equal(rng.normal_pairs(keys[10:11], 9, 4000)[0], z[10])
    stream = rng.NormalStream(64, 4000)
    assert torch.equal(stream(keys, 9), z)
    assert not torch.equal(stream(keys, 10), z)
    v = z.double().flatten()
    assert abs(v.mean().item()) < 0.01
    assert abs(v.var().item() - 1.0) < 0.01
    assert abs(((v - v.mean()) ** 4).mean().item() / v.var().item() ** 2 - 3.0) < 0.05
    for q in (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0):  # CDF within 5 binomial sds
        want = 0.5 * (1.0 + math.erf(q / math.sqrt(2.0)))
        sd = math.sqrt(want * (1.0 - want) / v.numel())
        assert abs((v < q).double().mean().item() - want) < 5 * sd + 1e-6
    lag = np.corrcoef(v[:-1].numpy(), v[1:].numpy())[0, 1]
    pair = np.corrcoef(z[:, :2000].flatten().numpy(), z[:, 2000:].flatten().numpy())[0, 1]
    assert abs(lag) < 0.01 and abs(pair) < 0.01


def test_fused_update_equals_reference_step() -> None:
    # w ← a·w + b·w* + c·g + s·ξ regrouped from devinterp's update: float32 round-off, 1e-6.
    R = 3
    keys = rng.key([5, 6, 7])
    w = {"a": torch.randn(R, 4), "b": torch.randn(R, 2, 5)}
    c = {k: v + 0.1 for k, v in w.items()}
    g = {k: torch.randn_like(v) for k, v in w.items()}
    h = samplers.make_hyper(
        R, [1e-3, 2e-3, 3e-3], [10.0, 20.0, 30.0], [1.0, 2.0, 3.0], [0.0, 0.1, 0.2], [1.0, 0.5, 2.0]
    )
    setup = samplers.Setup(c, h, keys, tuple(sorted(w)))
    want = sgld.step(sgld.init(dict(w), setup), g, 4)[0].params
    for kernel in (sgld.FUSED_CPU, sgld.FUSED_TORCH):  # in place, on the state's own tensors
        got = kernel.step(kernel.init({k: v.clone() for k, v in w.items()}, setup), g, 4)[0].params
        for k in w:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)
    assert samplers.select("sgld", w, setup) is sgld.FUSED_CPU
    assert samplers.select("sgld", w, setup, fast=False) is sgld.REFERENCE


def test_fast_sampler_matches_reference_traces_and_estimates() -> None:
    # Same seeds, same noise and minibatches: fast gradient + fused step vs autograd + generic
    # step over 40 steps. Float32 round-off grows slowly along a chain: traces within rtol 1e-4,
    # λ̂ within 1e-3 relative, far inside the chains' Monte-Carlo spread.
    cfg, params, rows = _setup(R=1, K=24)
    params = {k: v.repeat_interleave(4, 0) for k, v in params.items()}
    rows = rows.expand(4, -1).contiguous()
    kw = dict(
        groups=1, chains=4, step_size=1e-3, gamma=5.0, burnin=10, draws=30, seed=3, diagnose=False
    )
    fast = estimate_llc(from_modular(cfg, params, rows, 16), **kw)
    ref = estimate_llc(from_modular(cfg, params, rows, 16, fast=False), fused=False, **kw)
    np.testing.assert_allclose(fast.result.traces, ref.result.traces, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fast.llc, ref.llc, rtol=1e-3)
    assert np.abs(fast.llc_mean - ref.llc_mean).max() < 0.1 * ref.llc_std.max()


def test_fast_path_freezes_diverged_chains_without_touching_others() -> None:
    # Chains 2 and 3 get a huge ε and blow up; chains 0 and 1 must give exactly the traces they
    # give when every chain is healthy (replicas are independent; exact equality).
    cfg, params, rows = _setup(R=1, K=24)
    params = {k: v.repeat_interleave(4, 0) for k, v in params.items()}
    rows = rows.expand(4, -1).contiguous()
    kw = dict(groups=1, chains=4, gamma=5.0, burnin=5, draws=20, seed=3, diagnose=False)
    bad = estimate_llc(from_modular(cfg, params, rows, 16), step_size=[1e-3, 1e-3, 1e4, 1e4], **kw)
    good = estimate_llc(from_modular(cfg, params, rows, 16), step_size=1e-3, **kw)
    assert bad.result.diverged.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(bad.result.traces[:2], good.result.traces[:2])
    assert np.isnan(bad.result.traces[2:, -1]).all()


def test_cpu_worker_shards_give_the_same_estimates() -> None:
    # 6 replicas as one batch or split into 2 or 4 shards that run in parallel threads:
    # every replica's streams are its own, so traces agree to float32 round-off of different
    # batch shapes (rtol 1e-5); the progress callback adds up to exactly one unit per step.
    cfg, params, rows = _setup(R=1, K=24)
    params = {k: v.repeat_interleave(6, 0) for k, v in params.items()}
    rows = rows.expand(6, -1).contiguous()
    kw = dict(
        groups=2, chains=3, step_size=1e-3, gamma=5.0, burnin=5, draws=15, seed=4, diagnose=False
    )
    one = estimate_llc(from_modular(cfg, params, rows, 16), cpu_workers=1, **kw)
    for workers in (2, 4):
        ticks: list[float] = []
        many = estimate_llc(
            from_modular(cfg, params, rows, 16), cpu_workers=workers, on_step=ticks.append, **kw
        )
        np.testing.assert_allclose(many.result.traces, one.result.traces, rtol=1e-5)
        np.testing.assert_array_equal(many.result.init_loss, one.result.init_loss)
        assert sum(ticks) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="cpu_workers"):
        estimate_llc(from_modular(cfg, params, rows, 16), cpu_workers=0, **kw)


def test_cpu_kernel_noise_is_the_same_stream_closer_to_exact() -> None:
    # The numba kernel evaluates NormalStream's definition in float64: against pure-Python
    # SplitMix64 + Box–Muller with library cos/sin within 1e-6 (its angle polynomials are good
    # to 5e-7), against the float32 torch stream within 2e-5 (that one's rounding near u1 ≈ 1).
    from grokbasin.llc import cpu_kernels

    keys = rng.key([3, 4, 9])
    n, m = 2001, 1001
    torch_z = rng.normal_pairs(keys, 5, n)
    starts = rng.StreamStarts(keys)(5).numpy().view(np.uint64)
    for r in range(3):
        row = np.empty(2 * m, dtype=np.float32)
        cpu_kernels.fill_normals(starts[r], row)
        np.testing.assert_allclose(row[:n], torch_z[r].numpy(), atol=2e-5, rtol=0)
        for i in (0, 1, 500, 1000):
            word = _splitmix_reference(int(keys[r]), 5, i)
            u1 = ((word >> 32) + 0.5) * 2.0**-32
            angle = 2 * math.pi * (((word & 0xFFFFFFFF) + 0.5) * 2.0**-32 - 0.5)
            rad = math.sqrt(-2.0 * math.log(u1))
            assert row[i] == pytest.approx(rad * math.cos(angle), abs=1e-6)
            assert row[m + i] == pytest.approx(rad * math.sin(angle), abs=1e-6)


def test_cpu_kernel_update_equals_torch_update() -> None:
    # The fused SGLD kernel's compiled CPU loop vs its torch path (stream + in-place passes):
    # the same update with the same stream, float32 round-off of the noise (2e-5·s) apart.
    R = 4
    keys = rng.key([1, 2, 3, 4])
    w = {"V": torch.randn(R, 3, 7), "W": torch.randn(R, 5, 7)}
    c = {k: v + 0.1 for k, v in w.items()}
    g = {k: torch.randn_like(v) for k, v in w.items()}
    h = samplers.make_hyper(R, [1e-3, 2e-3, 3e-3, 4e-3], 30.0, 5.0, 0.01, 1.0)
    setup = samplers.Setup(c, h, keys, tuple(sorted(w)))
    assert sgld.FUSED_CPU.applies(w, setup)
    sa = sgld.FUSED_CPU.init({k: v.clone() for k, v in w.items()}, setup)
    sb = sgld.FUSED_TORCH.init({k: v.clone() for k, v in w.items()}, setup)
    a, b = sa.params, sb.params
    for t in range(3):
        sa, _ = sgld.FUSED_CPU.step(sa, g, t)
        sb, _ = sgld.FUSED_TORCH.step(sb, g, t)
    assert sa.params is a and sb.params is b  # updated in place
    for k in w:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
        assert not torch.equal(a[k], w[k])

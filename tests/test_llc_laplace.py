"""Localised Laplace prediction: Gauss–Newton normalisation, rank, SLQ vs exact (SPEC §3.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import hessian

from grokbasin import rng
from grokbasin.config import build_config, dump_yaml
from grokbasin.errors import GrokbasinError
from grokbasin.llc import laplace as L
from grokbasin.losses import centred_mse
from grokbasin.models import quadratic
from grokbasin.tasks.modular import make_modular_task
from grokbasin.train.runner import train

Tensors = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]


def setup(p: int, width: int, seed: int = 0) -> Tensors:
    """One replica of the quadratic net at its random init, with the train tokens and labels."""
    cfg = build_config({}, {"task.p": p, "train.batch_size": 0}).task
    task = make_modular_task(cfg, [seed])
    params = quadratic.init(rng.key([seed]), p, p, width)
    idx = task.train_idx[0]
    return params, task.x[idx], task.y[idx]


def test_spectrum_is_the_hessian_of_the_centred_mse_at_zero_residual() -> None:
    params, x, y = setup(5, 3)
    w0 = {k: v.double() for k, v in params.items()}
    f0 = quadratic.forward(w0, x)
    target = torch.nn.functional.one_hot(y, 5).double()
    names = list(w0)

    def loss(flat: torch.Tensor) -> torch.Tensor:  # the package's loss, residual zero at w0
        parts, lo = {}, 0
        for k in names:
            n = w0[k].numel()
            parts[k] = flat[lo : lo + n].reshape(w0[k].shape)
            lo += n
        return centred_mse(quadratic.forward(parts, x) - f0 + target, y)[0]

    flat0 = torch.cat([w0[k].reshape(-1) for k in names])
    hess_eig = torch.linalg.eigvalsh(hessian(loss)(flat0)).flip(0).numpy()
    spec = L.gauss_newton_spectrum(quadratic.forward, params, x)
    k = spec.rank
    # float64 throughout: the nonzero eigenvalues agree to 1e-9 relative
    np.testing.assert_allclose(spec.positive, hess_eig[:k], rtol=1e-9, atol=1e-12 * hess_eig[0])
    assert abs(hess_eig[k]) < 1e-9 * hess_eig[0]  # and the rest of the Hessian is null


def test_closed_form_gram_matches_torch_func_jacobian() -> None:
    params, x, _ = setup(7, 8)
    a = L.quadratic_spectrum(params, x)
    b = L.gauss_newton_spectrum(quadratic.forward, params, x)
    assert a.rank == b.rank
    np.testing.assert_allclose(a.positive, b.positive, rtol=1e-8)  # same matrix, float64 rounding


def test_rank_equals_data_limit_when_it_binds() -> None:
    params, x, _ = setup(11, 32)  # P = 1056 > p·(N−1) = 11·47 = 517
    spec = L.quadratic_spectrum(params, x)
    assert spec.rank == 11 * (x.shape[0] - 1)  # exact integer
    kept, dropped = spec.eigenvalues[spec.rank - 1], spec.eigenvalues[spec.rank]
    assert dropped < 1e-6 * kept  # a clear gap: the cut does not depend on the tolerance
    assert L.laplace_limit(spec) == spec.rank / 2


def test_laplace_llc_broadcasts_and_has_the_right_limits() -> None:
    mu = np.array([2.0, 0.5, 1e-3, 0.0])
    nb, g = np.array([[10.0], [100.0]]), np.array([1.0, 5.0, 20.0])
    out = L.laplace_llc(mu, nb, g)
    assert out.shape == (2, 3)
    brute = 0.5 * sum(100 * m / (100 * m + 5.0) for m in mu)
    assert out[1, 1] == pytest.approx(brute, rel=1e-12)  # float64 rounding only
    assert np.all(np.diff(out, axis=0) > 0) and np.all(np.diff(out, axis=1) < 0)
    assert L.laplace_llc(mu, 1e12, 1e-6) == pytest.approx(1.5, rel=1e-6)  # rank(3)/2


def test_slq_matches_exact_on_a_small_model() -> None:
    params, x, _ = setup(11, 16)
    spec = L.quadratic_spectrum(params, x)
    nodes, w, P = L.slq_nodes(quadratic.forward, params, x, probes=24, steps=40, seed=1)
    nb, g = np.array([26.4, 500.0]), np.array([5.0, 1.0])
    est, se = L.slq_laplace_llc(nodes, w, P, nb, g)
    exact = L.laplace_llc(spec, nb, g)
    # SLQ error is Hutchinson noise (se ~1-2%) plus quadrature bias; allow 8% and 4 standard errors
    np.testing.assert_allclose(est, exact, rtol=0.08)
    assert np.all(np.abs(est - exact) < 4 * se + 1e-9)


def test_slq_nodes_do_not_depend_on_the_probe_batching() -> None:
    params, x, _ = setup(7, 8)
    args = (quadratic.forward, params, x)
    big = L.slq_nodes(*args, probes=6, steps=12, seed=2, probe_batch=6)
    tiny_budget = L.slq_nodes(*args, probes=6, steps=12, seed=2, basis_bytes=1)  # one at a time
    for a, b in zip(big[:2], tiny_budget[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_laplace_for_checkpoint_exact_and_slq_agree(tmp_path: Path) -> None:
    cfg = build_config(
        {},
        {
            "task.p": 7,
            "model.width": 8,
            "train.batch_size": 0,
            "train.epochs": 20,
            "train.checkpoint_every": 10,
            "train.seeds": [0, 1],
        },
    )
    run = train(cfg, tmp_path, progress=False).run
    ex = L.laplace_for_checkpoint(run.path, 20, 1, [26.4, 500.0], [1.0, 5.0], method="exact")
    sl = L.laplace_for_checkpoint(
        run.path, 20, 1, [26.4, 500.0], [1.0, 5.0], method="slq", probes=16, steps=24
    )
    assert ex.values.shape == (2, 2) and ex.method == "exact" and sl.method == "slq"
    assert ex.rank is not None and ex.limit == ex.rank / 2
    np.testing.assert_allclose(sl.values, ex.values, rtol=0.12)  # SLQ noise, 16 probes: 12%
    auto = L.laplace_for_checkpoint(run.path, 20, 1, [26.4], [5.0])
    assert auto.method == "exact" and auto.values[0, 0] == pytest.approx(ex.values[0, 1], rel=1e-12)


def test_laplace_for_checkpoint_rejects_cross_entropy_and_bad_replica(tmp_path: Path) -> None:
    def run_dir(cfg) -> Path:  # a config.yaml in the folder of its run hash
        (tmp_path / cfg.run_hash()).mkdir()
        (tmp_path / cfg.run_hash() / "config.yaml").write_text(dump_yaml(cfg))
        return tmp_path / cfg.run_hash()

    cfg = build_config({}, {"task.p": 7, "train.batch_size": 0, "train.loss": "cross_entropy"})
    with pytest.raises(GrokbasinError, match="centred_mse"):
        L.laplace_for_checkpoint(run_dir(cfg), 0, 0, [1.0], [1.0])
    cfg = build_config({}, {"task.p": 7, "train.batch_size": 0})
    with pytest.raises(GrokbasinError, match="replica 3 out of range"):
        L.laplace_for_checkpoint(run_dir(cfg), 0, 3, [1.0], [1.0])

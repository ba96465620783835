"""Structured Gauss–Newton products of the quadratic net and the SLQ rank bracket (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grokbasin import rng
from grokbasin.config import build_config
from grokbasin.llc import laplace as L
from grokbasin.llc.quadratic_gn import QuadraticGN
from grokbasin.models import quadratic
from grokbasin.tasks.modular import make_modular_task


def setup(p: int, width: int, seed: int = 0):
    """One replica of the quadratic net at its random init, with its training tokens."""
    cfg = build_config({}, {"task.p": p, "train.batch_size": 0}).task
    task = make_modular_task(cfg, [seed])
    params = quadratic.init(rng.key([seed]), p, p, width)
    return params, task.x[task.train_idx[0]], None


def test_structured_products_match_torch_func() -> None:
    params, x, _ = setup(7, 12, seed=3)
    op = QuadraticGN(params["W"][0], params["V"][0], x)
    g = torch.Generator().manual_seed(0)
    dW = torch.randn(3, 14, 12, generator=g, dtype=torch.float64)
    dV = torch.randn(3, 7, 12, generator=g, dtype=torch.float64)
    ref = L.gn_matvec(quadratic.forward, params, x)({"W": dW, "V": dV})
    hW, hV = op.matvec(dW.transpose(0, 1).contiguous(), dV)
    torch.testing.assert_close(hW.transpose(0, 1), ref["W"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hV, ref["V"], rtol=1e-12, atol=1e-12)
    # G = J_c J_cᵀ / N in the sample space: same nonzero spectrum as the exact H
    n, o = x.shape[0], 7
    eye = torch.eye(n * o, dtype=torch.float64).view(n * o, n, o).transpose(0, 1)
    G = op.sample_matvec(eye).transpose(0, 1).reshape(n * o, n * o)
    spec = L.quadratic_spectrum(params, x)
    eig = torch.linalg.eigvalsh(G).flip(0).numpy()
    np.testing.assert_allclose(eig[: spec.rank], spec.positive, rtol=1e-9, atol=1e-12 * eig[0])


def test_slq_count_brackets_a_known_count() -> None:
    """Chebyshev–Markov–Stieltjes: the bracket holds for every probe, at every threshold."""
    mu = np.concatenate([np.zeros(40), np.geomspace(1e-9, 1.0, 160)])
    A = torch.diag(torch.tensor(mu))
    z = torch.where(
        torch.rand(12, 200, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0
    )
    alpha, beta = L.lanczos(lambda q: q @ A, z.double(), 12)
    T = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    theta, vecs = torch.linalg.eigh(T)
    w = (vecs[:, 0, :] ** 2 * 200).numpy()
    for tol in (1e-12, 1e-6, 1e-3, 0.1):
        lo, hi, se = L.slq_count(theta.clamp_min(0).numpy(), w, 1, tol)
        true = int((mu > tol).sum())
        assert lo - 4 * se <= true <= hi + 4 * se, (tol, lo, hi, true)
        assert lo <= hi
    lo, hi, _ = L.slq_count(theta.clamp_min(0).numpy(), w, 1, 0.1)
    assert hi - lo < 100  # above the resolution the bracket is informative (160 nonzero)


def test_quadratic_slq_agrees_with_exact_and_brackets_the_rank() -> None:
    params, x, _ = setup(11, 24, seed=2)
    spec = L.quadratic_spectrum(params, x)
    nodes, w, dim = L.quadratic_slq_nodes(params, x, probes=16, steps=40, seed=4)
    assert dim == 11 * (x.shape[0] - 1)
    nb, g = np.array([26.4, 500.0]), np.array([5.0, 1.0])
    est, se = L.slq_laplace_llc(nodes, w, 1, nb, g)
    exact = L.laplace_llc(spec, nb, g)
    assert np.all(np.abs(est - exact) < 4 * se + 0.02 * exact), (est, exact, se)
    lo, hi, rse = L.slq_count(nodes, w, 1, spec.tol)
    d_lo, d_hi = L.quadratic_rank_bounds(params, x, spec.tol)
    assert d_lo <= spec.rank <= d_hi
    assert max(lo, d_lo) - 4 * rse <= spec.rank <= min(hi, d_hi) + 4 * rse


@pytest.mark.parametrize("method", ["exact", "slq"])
def test_pipeline_theory_reports_rank_and_stderr(tmp_path, method) -> None:
    from grokbasin.train.runner import train

    cfg = build_config(
        {}, {"task.p": 7, "model.width": 8, "train.batch_size": 0, "train.epochs": 20}
    )
    run = train(cfg, tmp_path, progress=False).run
    res = L.laplace_for_checkpoint(run.path, 20, 0, [26.4], [5.0], method=method, probes=8)
    assert res.limit is not None and np.isfinite(res.limit)
    assert res.stderr is not None and np.all(np.isfinite(res.stderr))
    lo, hi = res.rank_bounds
    assert lo <= res.rank <= hi
    if method == "exact":
        assert lo == hi == res.rank and res.rank_stderr == 0.0

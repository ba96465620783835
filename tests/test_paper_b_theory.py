"""Paper B closed forms against hand values, and the TMS k-gon against the model's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from grokbasin.models import tms
from grokbasin.theory import paper_b as P


def test_polynomial_llc_hand_values():
    # exact: (d + 1)/2 coefficients over two; the paper's line is d/2
    assert P.polynomial_llc(0) == 0.5
    assert P.polynomial_llc(1) == 1.0
    assert P.polynomial_llc(9) == 5.0
    assert P.polynomial_llc_paper(9) == 4.5
    with pytest.raises(ValueError):
        P.polynomial_llc(-1)


def test_low_rank_llc_hand_values():
    # exact: r(2d − r)/2 — d = 100: r = 1 -> 99.5, r = 100 -> 5000 (= d²/2, full rank is regular)
    assert P.low_rank_llc(100, 1) == 99.5
    assert P.low_rank_llc(100, 100) == 5000.0
    assert P.low_rank_llc(3, 2) == 4.0
    with pytest.raises(ValueError):
        P.low_rank_llc(3, 4)


def test_kgon_norm_thresholds():
    # l² = 1/(1 − cos 2π/k) for k >= 5 (neighbours must be cut by the ReLU), 1 otherwise
    assert P.tms_kgon_norm2(4) == pytest.approx(1.0, rel=1e-12)
    assert P.tms_kgon_norm2(6) == pytest.approx(2.0, rel=1e-12)
    assert P.tms_kgon_norm2(8) == pytest.approx(1 / (1 - math.sqrt(0.5)), rel=1e-12)


def _population(n: int, copies: int = 3) -> torch.Tensor:
    """Every one-hot input equally often: the population of paper B's TMS data, [1, N, n]."""
    return torch.eye(n).repeat(copies, 1)[None]


@pytest.mark.parametrize("k", [0, 2, 3, 5, 7, 8])
def test_kgon_loss_matches_model_and_is_critical(k):
    # the model's loss at the constructed k-gon equals (n − k)(n − 1)/n² (float32: 1e-6 abs),
    # and the gradient of the population loss vanishes there (1e-5 abs)
    n = 8
    x = _population(n)
    params = {k_: v.clone().requires_grad_(True) for k_, v in P.tms_kgon_params(n, k).items()}
    loss = (tms.forward(params, x) - x).square().sum(-1).mean(-1)
    assert float(loss.detach()) == pytest.approx(P.tms_kgon_loss(n, k), abs=1e-6)
    grads = torch.autograd.grad(loss.sum(), list(params.values()))
    assert max(float(g.abs().max()) for g in grads) < 1e-5


def test_kgon_loss_with_frequencies():
    # Σ_dead p_j(1 − p_j), exact to float64 rounding
    f = torch.tensor([0.5, 0.3, 0.2])
    assert P.tms_kgon_loss(3, 1, f) == pytest.approx(0.3 * 0.7 + 0.2 * 0.8, rel=1e-6)


def test_one_gon_is_not_critical():
    # a lone feature vector does not sum to zero, so the dead columns feel a gradient (> 1e-3)
    x = _population(8)
    params = {k: v.clone().requires_grad_(True) for k, v in P.tms_kgon_params(8, 1).items()}
    loss = (tms.forward(params, x) - x).square().sum(-1).mean(-1)
    assert float(torch.autograd.grad(loss.sum(), params["W"])[0].abs().max()) > 1e-3

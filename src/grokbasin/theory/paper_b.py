"""Closed forms for paper B's model families (SPEC §3.8), to hold LLC estimates against.

- Polynomial regressor of degree d: regular with d + 1 coefficients, λ = (d + 1)/2. The paper
  writes d/2 (it counts degree, not coefficients); ``polynomial_llc_paper`` gives that value.
- Low-rank linear network W₂W₁ (d → r → d) at a realisable rank-matched truth: λ = r(2d − r)/2,
  the dimension of rank-r d×d matrices over two; the general reduced-rank-regression coefficient
  (true rank ≠ model rank, unequal sizes) is Aoyagi–Watanabe's, in ``grokbasin.theory.rrr``.
- TMS (x̂ = ReLU(WᵀWx + b), W ∈ R^{2×n}) on paper B's one-hot data (one feature = 1 per sample):
  the regular k-gon — k feature columns of equal norm l at angles 2πi/k, the rest zero — with
  l² ≥ max(1, 1/(1 − cos 2π/k)), b_i = 1 − l² on the k-gon and b_j = p_j (the frequency of
  feature j) off it, reconstructs the k learned features exactly and outputs the constant p_j on
  each dead one, so its loss (squared error summed over outputs, mean over samples) is
  Σ_dead p_j(1 − p_j) = (n − k)(n − 1)/n² at uniform frequencies. For k = 0 and k ≥ 2 it is a
  critical point of the population loss (the dead columns' gradient is b_j Σ_active p_i w_i, zero
  for a regular polygon; k = 1 is not critical) and lies in a flat set in (l, b). Derived here
  for this data; the LLC of these k-gons for one-hot data has no closed form we know of (Chen
  et al. 2023 treat uniform-valued sparse data), so none is given — estimate it numerically.
- Low-rank autoencoder: no closed form is known; paper B only reports a linear fit in r.
"""

from __future__ import annotations

import math

import torch


def polynomial_llc(degree: int) -> float:
    """λ = (d + 1)/2: a regular model with d + 1 identifiable coefficients."""
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    return (degree + 1) / 2


def polynomial_llc_paper(degree: int) -> float:
    """The paper's stated theory line d/2 (one less coefficient than the model has)."""
    return degree / 2


def low_rank_llc(d: int, r: int) -> float:
    """λ = r(2d − r)/2 for W₂W₁, d → r → d, at a rank-r truth (the paper's theory line)."""
    if not 1 <= r <= d:
        raise ValueError(f"need 1 <= r <= d, got r={r}, d={d}")
    return r * (2 * d - r) / 2


def tms_kgon_norm2(k: int) -> float:
    """Smallest squared column norm l² at which a k-gon reconstructs one-hot data exactly."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return 1.0 if k == 1 else max(1.0, 1.0 / (1.0 - math.cos(2 * math.pi / k)))


def tms_kgon_loss(n: int, k: int, freqs: torch.Tensor | None = None) -> float:
    """Loss of the k-gon on one-hot data: Σ_dead p_j(1 − p_j); (n − k)(n − 1)/n² when uniform."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if freqs is None:
        return (n - k) * (n - 1) / n**2
    p = freqs[k:].to(torch.float64)
    return float((p * (1 - p)).sum())


def tms_kgon_params(
    n: int, k: int, freqs: torch.Tensor | None = None, margin: float = 1.1
) -> dict[str, torch.Tensor]:
    """The k-gon on features 0..k−1 as TMS params (replica axis of 1); ``margin`` × minimal l²."""
    l2 = tms_kgon_norm2(k) * margin if k > 0 else 0.0
    ang = 2 * math.pi * torch.arange(k, dtype=torch.float64) / max(k, 1)
    W = torch.zeros(2, n, dtype=torch.float64)
    W[0, :k], W[1, :k] = math.sqrt(l2) * ang.cos(), math.sqrt(l2) * ang.sin()
    p = torch.full((n,), 1.0 / n, dtype=torch.float64) if freqs is None else freqs.double()
    b = torch.cat([torch.full((k,), 1.0 - l2, dtype=torch.float64), p[k:]])
    return {"W": W[None].float(), "b": b[None].float()}

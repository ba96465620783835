"""Float-input data sets of paper B (SPEC §3.8), one independent data set per replica.

Every generator takes replica keys [R] and returns a :class:`RegressionData` with ``x`` [R, N, d_in]
and ``y`` [R, N, d_out]: TMS data (one-hot, or general feature sparsity with importances),
polynomial regression on [−c, c], low-rank linear data y = Mx and low-rank autoencoder data x = Az.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grokbasin import rng

_X_TAG, _Y_TAG, _TRUTH_TAG, _NOISE_TAG, _MASK_TAG = 0xDA7A, 0xDA7B, 0x7207, 0x1015, 0x3A5C


@dataclass(frozen=True)
class RegressionData:
    """Inputs, targets and optional per-output loss weights (TMS importance), replica axis first."""

    x: torch.Tensor  # [R, N, d_in]
    y: torch.Tensor  # [R, N, d_out]
    weights: torch.Tensor | None = None  # [d_out] importance of each output, or None

    @property
    def n(self) -> int:
        return self.x.shape[1]


def tms_one_hot(keys: torch.Tensor, n_features: int = 8, n_samples: int = 1000) -> RegressionData:
    """Paper B's TMS data: one feature, chosen uniformly, set to 1 per sample; target = input."""
    idx = rng.randint(rng.fold_in(keys, _X_TAG), n_features, (n_samples,))
    x = torch.nn.functional.one_hot(idx, n_features).to(torch.float32)
    return RegressionData(x, x)


def tms_sparse(
    keys: torch.Tensor,
    n_features: int,
    n_samples: int,
    sparsity: float,
    importance_decay: float = 1.0,
) -> RegressionData:
    """Elhage et al.'s TMS data: feature 0 w.p. ``sparsity``, else U(0, 1); I_i = decay^i."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    shape = (n_samples, n_features)
    on = rng.uniform(rng.fold_in(keys, _MASK_TAG), shape) >= sparsity
    x = rng.uniform(rng.fold_in(keys, _X_TAG), shape) * on
    w = importance_decay ** torch.arange(n_features, dtype=torch.float32, device=keys.device)
    return RegressionData(x, x, w)


def polynomial(
    keys: torch.Tensor,
    n_samples: int = 500,
    c: float = 1.0,
    true_degree: int = 3,
    noise: float = 0.1,
) -> RegressionData:
    """x ~ U[−c, c], y = Σ_{i≤true_degree} a_i (x/c)^i + noise·N(0,1), a_i ~ N(0, 1)."""
    x = (2.0 * rng.uniform(rng.fold_in(keys, _X_TAG), (n_samples, 1)) - 1.0) * c
    a = rng.normal(rng.fold_in(keys, _TRUTH_TAG), (true_degree + 1,))
    powers = (x / c) ** torch.arange(true_degree + 1, dtype=x.dtype, device=x.device)
    y = (powers * a[:, None, :]).sum(-1, keepdim=True)
    y = y + noise * rng.normal(rng.fold_in(keys, _NOISE_TAG), (n_samples, 1))
    return RegressionData(x, y)


def low_rank_linear(
    keys: torch.Tensor,
    d: int,
    true_rank: int | list[int],
    n_samples: int,
    noise: float = 0.0,
    d_out: int | None = None,
) -> RegressionData:
    """x ~ N(0, I_d), y = M x + noise with M = B A of rank ``true_rank`` (one rank per replica)."""
    R, d_out = keys.shape[0], d_out or d
    ranks = _per_replica(true_rank, R, keys.device)
    hmax = int(ranks.max())
    mask = (torch.arange(hmax, device=keys.device)[None, :] < ranks[:, None]).to(torch.float32)
    A = rng.normal(rng.fold_in(keys, _TRUTH_TAG), (hmax, d)) / d**0.5
    B = rng.normal(rng.fold_in(keys, _TRUTH_TAG + 1), (d_out, hmax)) * mask[:, None, :]
    x = rng.normal(rng.fold_in(keys, _X_TAG), (n_samples, d))
    y = x @ (B @ A).transpose(1, 2)
    y = y + noise * rng.normal(rng.fold_in(keys, _NOISE_TAG), (n_samples, d_out))
    return RegressionData(x, y)


def low_rank_autoencoder(
    keys: torch.Tensor, d: int, rank: int | list[int], n_samples: int
) -> RegressionData:
    """x = A z, z ~ N(0, I_r), A ∈ R^{d×r} ~ N(0, 1/r) (one rank per replica); target x."""
    R = keys.shape[0]
    ranks = _per_replica(rank, R, keys.device)
    rmax = int(ranks.max())
    mask = (torch.arange(rmax, device=keys.device)[None, :] < ranks[:, None]).to(torch.float32)
    z = rng.normal(rng.fold_in(keys, _Y_TAG), (n_samples, rmax)) * mask[:, None, :]
    A = (
        rng.normal(rng.fold_in(keys, _TRUTH_TAG), (d, rmax))
        / ranks.to(torch.float32).sqrt()[:, None, None]
    )
    x = z @ A.transpose(1, 2)
    return RegressionData(x, x)


def _per_replica(v: int | list[int], R: int, device: torch.device) -> torch.Tensor:
    """An int or a list of R ints as an int64 tensor [R]."""
    t = torch.as_tensor(v, dtype=torch.int64, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(R)
    if t.numel() != R or bool((t < 1).any()):
        raise ValueError(f"need one rank >= 1 per replica ({R}), got {v}")
    return t

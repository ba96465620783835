"""Toy Model of Superposition: tied autoencoder x̂ = ReLU(WᵀWx + b), W ∈ R^{m×n} (SPEC §3.8).

Shapes: W [R, m, n], b [R, n]; inputs x [N, n] (shared) or [R, N, n]; output [R, N, n].
"""

from __future__ import annotations

import math

import torch

from grokbasin import rng


def init(
    keys: torch.Tensor, n_features: int = 8, n_hidden: int = 2, scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Xavier-normal W (Elhage et al.'s init), zero bias, per replica."""
    std = scale * math.sqrt(2.0 / (n_features + n_hidden))
    W = rng.normal(rng.fold_in(keys, 21), (n_hidden, n_features)) * std
    return {"W": W, "b": torch.zeros(keys.shape[0], n_features, device=keys.device)}


def hidden(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Hidden code h = Wx for every sample: [R, N, m]."""
    return torch.matmul(x, params["W"].transpose(1, 2))


def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Reconstruction ReLU(WᵀWx + b): [R, N, n]."""
    return torch.relu(torch.matmul(hidden(params, x), params["W"]) + params["b"][:, None, :])

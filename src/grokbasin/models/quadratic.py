"""The paper's two-layer quadratic network f(x) = V σ(Wᵀx), σ(z) = z², no biases.

x = [e_a; e_b] is two one-hots, so Wᵀx = W[a] + W[p + b]: a row lookup, never a dense matmul.
Shapes: W [R, 2p, K], V [R, p, K] (V is laid out like ``nn.Linear(K, p).weight``).
"""

from __future__ import annotations

import torch

from grokbasin.models.common import linear_init, rows


def init(
    keys: torch.Tensor, n_tokens: int, n_outputs: int, width: int, scale: float = 1.0
) -> dict[str, torch.Tensor]:
    d = 2 * n_tokens
    return {
        "W": linear_init(keys, 1, (d, width), fan_in=d, scale=scale),
        "V": linear_init(keys, 2, (n_outputs, width), fan_in=width, scale=scale),
    }


def hidden(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Pre-activations Wᵀx: [R, n, K]."""
    W = params["W"]
    p = W.shape[1] // 2
    return rows(W, x[..., 0]) + rows(W, x[..., 1] + p)


def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = hidden(params, x)
    return torch.bmm(h * h, params["V"].transpose(1, 2))

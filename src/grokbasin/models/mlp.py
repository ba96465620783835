"""The peers' grokking MLP: shared embedding of each operand, one hidden layer, linear readout.

h = act([E[a]; E[b]] W1 + b1), f = h W2 + b2. Shapes: E [R, p, D], W1 [R, 2D, H], b1 [R, H],
W2 [R, H, p], b2 [R, p]. Embedding init N(0, 1) (``nn.Embedding``), linear layers as ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grokbasin import rng
from grokbasin.models.common import linear_init, rows


def init(
    keys: torch.Tensor,
    n_tokens: int,
    n_outputs: int,
    embed_dim: int,
    width: int,
    scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    d_in = 2 * embed_dim
    return {
        "E": rng.normal(rng.fold_in(keys, 10), (n_tokens, embed_dim)) * scale,
        "W1": linear_init(keys, 11, (d_in, width), fan_in=d_in, scale=scale),
        "b1": linear_init(keys, 12, (width,), fan_in=d_in, scale=scale),
        "W2": linear_init(keys, 13, (width, n_outputs), fan_in=width, scale=scale),
        "b2": linear_init(keys, 14, (n_outputs,), fan_in=width, scale=scale),
    }


def forward(
    params: dict[str, torch.Tensor], x: torch.Tensor, act: Callable = torch.relu
) -> torch.Tensor:
    E = params["E"]
    e = torch.cat([rows(E, x[..., 0]), rows(E, x[..., 1])], dim=-1)  # [R, n, 2D]
    h = act(torch.baddbmm(params["b1"][:, None, :], e, params["W1"]))
    return torch.baddbmm(params["b2"][:, None, :], h, params["W2"])

"""The peers' grokking MLP: shared embedding of each operand, one hidden layer, linear readout.

h = act([E[a]; E[b]] W1 + b1), f = h W2 + b2 (``init``, ``forward``); paper B's variant with one
Linear per operand, summed, GELU and a bias-free readout is ``init_paper_b``, ``forward_paper_b``.
Shapes: E [R, p, D], W1 [R, 2D, H], b1 [R, H], W2 [R, H, p], b2 [R, p]. Embedding init N(0, 1)
(``nn.Embedding``), linear layers as ``nn.Linear``.
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


def init_paper_b(
    keys: torch.Tensor, p: int, embed_dim: int = 12, width: int = 48
) -> dict[str, torch.Tensor]:
    """Paper B's grokking MLP (authors' code): E [R, p, D] ~ N(0, 1); per-operand Linear(D → H)
    with bias (Wa, ba, Wb, bb, fan-in D); readout U [R, H, p] without bias (fan-in H)."""
    return {
        "E": rng.normal(rng.fold_in(keys, 60), (p, embed_dim)),
        "Wa": linear_init(keys, 61, (embed_dim, width), fan_in=embed_dim, scale=1.0),
        "ba": linear_init(keys, 62, (width,), fan_in=embed_dim, scale=1.0),
        "Wb": linear_init(keys, 63, (embed_dim, width), fan_in=embed_dim, scale=1.0),
        "bb": linear_init(keys, 64, (width,), fan_in=embed_dim, scale=1.0),
        "U": linear_init(keys, 65, (width, p), fan_in=width, scale=1.0),
    }


def forward_paper_b(
    params: dict[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """logits = GELU(E[a] Wa + ba + E[b] Wb + bb) U for tokens x [n, 2] or [R, n, 2]: [R, n, p].

    ``mask`` [R, H] (0/1) keeps each replica's own hidden units when widths are padded to one.
    """
    E = params["E"]
    ha = torch.baddbmm(params["ba"][:, None, :], rows(E, x[..., 0]), params["Wa"])
    hb = torch.baddbmm(params["bb"][:, None, :], rows(E, x[..., 1]), params["Wb"])
    h = torch.nn.functional.gelu(ha + hb)
    if mask is not None:
        h = h * mask[:, None, :]
    return torch.bmm(h, params["U"])

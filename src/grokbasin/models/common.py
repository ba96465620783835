"""Shared pieces of the built-in models: PyTorch-default init and per-replica row lookup."""

from __future__ import annotations

import math

import torch

from grokbasin import rng


def linear_init(
    keys: torch.Tensor, tag: int, shape: tuple[int, ...], fan_in: int, scale: float
) -> torch.Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) * scale: the ``nn.Linear`` default, per replica."""
    u = rng.uniform(rng.fold_in(keys, tag), shape)
    return (2.0 * u - 1.0) * (scale / math.sqrt(fan_in))


def rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table [R, T, D] indexed by idx [n] (shared) or [R, n] (per replica) -> [R, n, D]."""
    if idx.dim() == 1:
        return table.index_select(1, idx)
    r = torch.arange(table.shape[0], device=table.device)[:, None]
    return table[r, idx]

"""Modular arithmetic c = a ∘ b (mod p) with a seeded train/validation split per replica.

All |D| pairs live on the device once (``x``: [M, 2] operand tokens, ``y``: [M] answers). A
replica's split is a row of ``train_idx`` [R, N] / ``val_idx`` [R, M-N]; with
``data_seed=None`` each replica draws its split from its own seed, otherwise all share one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grokbasin import rng
from grokbasin.config import TaskConfig

_SPLIT_TAG = 0x5EED


@dataclass(frozen=True)
class ModularTask:
    p: int
    op: str
    x: torch.Tensor  # [M, 2] int64 operands (a, b)
    y: torch.Tensor  # [M] int64 answers c
    train_idx: torch.Tensor  # [R, N] indices into x/y
    val_idx: torch.Tensor  # [R, M - N]

    @property
    def n_train(self) -> int:
        return self.train_idx.shape[1]

    @property
    def n_outputs(self) -> int:
        return self.p


def all_pairs(p: int, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every operand pair and its answer; division skips b = 0."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
    if op == "add":
        c = (a + b) % p
    elif op == "sub":
        c = (a - b) % p
    elif op == "mul":
        c = (a * b) % p
    elif op == "div":
        inv = torch.tensor([pow(int(v), -1, p) for v in range(1, p)])
        c = (a * inv[b - 1]) % p
    else:
        raise ValueError(f"unknown op {op!r}")
    return torch.stack([a, b], dim=1), c


def split_indices(
    n_pairs: int, n_train: int, seeds: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/val index rows, one seeded permutation per replica (sorted within each part)."""
    perm = rng.permutation(rng.fold_in(rng.key(seeds), _SPLIT_TAG), n_pairs)
    train, val = perm[:, :n_train], perm[:, n_train:]
    return train.sort(dim=1).values, val.sort(dim=1).values


def make_modular_task(
    cfg: TaskConfig, replica_seeds: list[int], device: str | torch.device = "cpu"
) -> ModularTask:
    """Build the task for replicas with the given seeds (``cfg.data_seed`` overrides them)."""
    x, y = all_pairs(cfg.p, cfg.op)
    seeds = (
        [cfg.data_seed] * len(replica_seeds) if cfg.data_seed is not None else list(replica_seeds)
    )
    train_idx, val_idx = split_indices(len(y), cfg.n_train, seeds)
    return ModularTask(
        p=cfg.p,
        op=cfg.op,
        x=x.to(device),
        y=y.to(device),
        train_idx=train_idx.to(device),
        val_idx=val_idx.to(device),
    )

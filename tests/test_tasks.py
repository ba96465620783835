"""Modular arithmetic data: answers, split sizes, per-replica and shared splits."""

import math

import pytest
import torch

from grokbasin.config import TaskConfig
from grokbasin.tasks.modular import all_pairs, make_modular_task


@pytest.mark.parametrize(
    "op,fn",
    [
        ("add", lambda a, b, p: (a + b) % p),
        ("sub", lambda a, b, p: (a - b) % p),
        ("mul", lambda a, b, p: (a * b) % p),
        ("div", lambda a, b, p: (a * pow(b, -1, p)) % p),
    ],
)
def test_answers(op, fn):
    p = 7
    x, y = all_pairs(p, op)
    assert len(y) == (p * (p - 1) if op == "div" else p * p)
    for (a, b), c in zip(x.tolist(), y.tolist(), strict=True):
        assert c == fn(a, b, p)


def test_split_sizes_and_disjointness():
    cfg = TaskConfig(p=13, frac=0.3)
    task = make_modular_task(cfg, [0, 1])
    n = math.floor(0.3 * 169)
    assert task.train_idx.shape == (2, n) and task.val_idx.shape == (2, 169 - n)
    for r in range(2):
        both = torch.cat([task.train_idx[r], task.val_idx[r]]).sort().values
        assert torch.equal(both, torch.arange(169))
    assert not torch.equal(task.train_idx[0], task.train_idx[1])  # own seed, own split


def test_split_is_seeded_and_shared_with_data_seed():
    a = make_modular_task(TaskConfig(p=13, data_seed=5), [0, 1])
    b = make_modular_task(TaskConfig(p=13, data_seed=5), [9])
    assert torch.equal(a.train_idx[0], a.train_idx[1])
    assert torch.equal(a.train_idx[0], b.train_idx[0])

"""Replica-batched optimisers as pure functions over parameter dicts (optax style).

Each replica has its own learning rate and weight decay (tensors [R]). The arithmetic follows
``torch.optim`` exactly (Adam with coupled L2, AdamW with decoupled decay, SGD with momentum), so
a replica trains as the same model would alone under ``torch.optim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grokbasin.types import Params

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Hyper:
    lr: torch.Tensor  # [R]
    weight_decay: torch.Tensor  # [R]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0


def _per_replica(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def init_state(name: str, params: Params) -> State:
    """Zeroed optimiser state; keys are '<slot>.<param name>' plus 'step'."""
    slots = {"adam": ("m", "v"), "adamw": ("m", "v"), "sgd": ("buf",)}[name]
    state = {f"{s}.{k}": torch.zeros_like(t) for s in slots for k, t in params.items()}
    state["step"] = torch.zeros((), dtype=torch.int64)
    return state


@torch.no_grad()
def step(name: str, params: Params, grads: Params, state: State, hp: Hyper) -> tuple[Params, State]:
    """One optimiser step for every replica; returns new params and state (inputs untouched)."""
    t = int(state["step"]) + 1
    new_p, new_s = {}, {"step": torch.tensor(t, dtype=torch.int64)}
    for k, w in params.items():
        g = grads[k]
        lr, wd = _per_replica(hp.lr, w), _per_replica(hp.weight_decay, w)
        if name == "adamw":
            w = w * (1 - lr * wd)
        else:
            g = g + wd * w
        if name == "sgd":
            buf = g if t == 1 else state[f"buf.{k}"] * hp.momentum + g
            new_s[f"buf.{k}"] = buf
            new_p[k] = w - lr * buf
            continue
        b1, b2 = hp.betas
        m = state[f"m.{k}"].lerp(g, 1 - b1)
        v = state[f"v.{k}"] * b2 + (1 - b2) * g * g
        denom = v.sqrt() / math.sqrt(1 - b2**t) + hp.eps
        new_p[k] = w - (lr / (1 - b1**t)) * m / denom
        new_s[f"m.{k}"], new_s[f"v.{k}"] = m, v
    return new_p, new_s

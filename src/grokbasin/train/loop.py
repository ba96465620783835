"""The replica-batched training loop, free of file I/O.

All replicas (seeds x learning rates x weight decays) share one forward/backward per step:
parameters carry a leading replica axis, each replica's loss depends only on its own slice, so
the gradient of the summed loss is every replica's own gradient. Shuffles come from each
replica's counter-based stream keyed by (seed, epoch), so a resumed run replays exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from grokbasin import rng
from grokbasin.config import RunConfig
from grokbasin.losses import LOSSES, accuracy
from grokbasin.models import Model, Params, build_model
from grokbasin.tasks import ModularTask, make_modular_task
from grokbasin.train import optim

_INIT_TAG, _SHUFFLE_TAG = 0x1417, 0x5AFF


@dataclass
class Setup:
    """Everything the loop needs for one batch of replicas, built once."""

    cfg: RunConfig  # shared settings (task, model, optimiser); lr/wd/seeds come from replicas
    task: ModularTask
    model: Model
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    hyper: optim.Hyper
    keys: torch.Tensor  # [R] replica keys (from the seeds)
    replicas: list[dict]  # per replica: seed, lr, weight_decay

    @property
    def batch_size(self) -> int:
        return self.cfg.train.batch_size or self.task.n_train

    def subset(self, idx: list[int]) -> Setup:
        """The same setup restricted to some replicas (for members that stop early)."""
        sel = torch.tensor(idx, device=self.keys.device)
        task = replace(
            self.task, train_idx=self.task.train_idx[sel], val_idx=self.task.val_idx[sel]
        )
        hyper = replace(
            self.hyper, lr=self.hyper.lr[sel], weight_decay=self.hyper.weight_decay[sel]
        )
        return replace(
            self,
            task=task,
            hyper=hyper,
            keys=self.keys[sel],
            replicas=[self.replicas[i] for i in idx],
        )


def make_setup(
    cfg: RunConfig, replicas: list[dict] | None = None, data_seeds: list[int] | None = None
) -> Setup:
    """Setup for ``cfg``'s replicas, or for an explicit replica list (several runs batched)."""
    reps = replicas if replicas is not None else cfg.train.replicas()
    dev = torch.device(cfg.device)
    seeds = [int(r["seed"]) for r in reps]
    if data_seeds is None:
        data_seeds = [cfg.task.data_seed if cfg.task.data_seed is not None else s for s in seeds]
    task = make_modular_task(cfg.task.model_copy(update={"data_seed": None}), data_seeds, dev)
    model = build_model(cfg.model, task.p, task.n_outputs)
    t = cfg.train
    hyper = optim.Hyper(
        lr=torch.tensor([r["lr"] for r in reps], device=dev),
        weight_decay=torch.tensor([r["weight_decay"] for r in reps], device=dev),
        betas=tuple(t.betas),
        eps=t.eps,
        momentum=t.momentum,
    )
    return Setup(cfg, task, model, LOSSES[t.loss], hyper, rng.key(seeds, dev), reps)


def init_params(s: Setup) -> Params:
    return s.model.init(rng.fold_in(s.keys, _INIT_TAG))


def batch_loss(s: Setup, params: Params, idx: torch.Tensor) -> torch.Tensor:
    """Per-replica mean loss on dataset rows idx [R, B] -> [R]."""
    return s.loss_fn(s.model.forward(params, s.task.x[idx]), s.task.y[idx])


@torch.no_grad()
def evaluate(s: Setup, params: Params, max_elems: int = 1 << 26) -> dict[str, torch.Tensor]:
    """Train/val loss and accuracy per replica on the full split ([R] each)."""
    R = s.keys.shape[0]
    m = s.cfg.model
    M, hidden = s.task.x.shape[0], max(m.width, 2 * m.embed_dim, m.ff)
    chunk = max(1, max_elems // (M * max(hidden, s.task.n_outputs)))
    parts = []
    for lo in range(0, R, chunk):  # bounded memory; one chunk in the usual case
        sl = slice(lo, lo + chunk)
        p = {k: v[sl] for k, v in params.items()}
        out = s.model.forward(p, s.task.x)  # [r, M, outputs]
        res = {}
        for name, idx in (("train", s.task.train_idx[sl]), ("val", s.task.val_idx[sl])):
            pred = out.gather(1, idx[..., None].expand(-1, -1, out.shape[-1]))
            res[f"{name}_loss"] = s.loss_fn(pred, s.task.y[idx])
            res[f"{name}_acc"] = accuracy(pred, s.task.y[idx])
        parts.append(res)
    return {k: torch.cat([r[k] for r in parts]) for k in parts[0]}


def epoch_batches(s: Setup, epoch: int) -> Iterator[torch.Tensor]:
    """Dataset rows [R, B] of each minibatch of training unit ``epoch``.

    A pass yields every shuffled batch (the last may be short). A step yields one batch of B rows
    drawn without replacement, fresh each step, as paper A's authors' ``next(iter(loader))`` does.
    """
    n, b = s.task.n_train, s.batch_size
    perm = rng.permutation(rng.fold_in(rng.fold_in(s.keys, _SHUFFLE_TAG), epoch), n)
    rows = s.task.train_idx.gather(1, perm)
    stop = b if s.cfg.train.unit == "step" else n
    for lo in range(0, stop, b):
        yield rows[:, lo : lo + b]


def steps_per_unit(s: Setup) -> int:
    """Optimiser steps in one training unit."""
    return 1 if s.cfg.train.unit == "step" else -(-s.task.n_train // s.batch_size)


def train_epoch(
    s: Setup, params: Params, state: optim.State, epoch: int
) -> tuple[Params, optim.State]:
    """One training unit (a pass or a step) for every replica."""
    name = s.cfg.train.optimizer
    for idx in epoch_batches(s, epoch):
        leaf = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = batch_loss(s, leaf, idx).sum()
        grads = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values())), strict=True))
        params, state = optim.step(name, params, grads, state, s.hyper)
    return params, state


def params_per_replica(cfg: RunConfig) -> int:
    """Parameter count of one replica of ``cfg.model`` (from the shapes, nothing allocated)."""
    m, p = cfg.model, cfg.task.p
    if m.name == "quadratic":
        return 3 * p * m.width
    if m.name == "mlp":
        return p * m.embed_dim + (2 * m.embed_dim + 1) * m.width + (m.width + 1) * p
    e = m.embed_dim
    per_layer = 4 * e * e + 2 * e * m.ff + 9 * e + m.ff
    return p * e + 2 * e + m.layers * per_layer + (e + 1) * p


def hidden_size(cfg: RunConfig) -> int:
    m = cfg.model
    return max(m.width, 2 * m.embed_dim, m.ff, cfg.task.p)


def estimate_train_bytes(cfg: RunConfig, n_replicas: int | None = None) -> int:
    """Rough peak memory of training ``cfg``: data, params with optimiser state, a step, an eval."""
    R = n_replicas or len(cfg.train.replicas())
    M, N = cfg.task.n_pairs, cfg.task.n_train
    B = cfg.train.batch_size or N
    H = hidden_size(cfg)
    data = 8 * M * (6 + 2 * R)  # operand pairs, answers, meshgrid temporaries, split indices
    params = 4 * 5 * R * params_per_replica(cfg)  # params, grads, two moments, update
    step = 4 * 4 * R * B * H  # activations kept for backward
    chunk = max(1, min(R, (1 << 26) // max(1, M * H)))
    evaluation = 4 * 3 * chunk * M * H
    return data + params + step + evaluation

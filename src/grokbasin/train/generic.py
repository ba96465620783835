"""A small replica-batched trainer for float- or token-input models (paper B's families).

All replicas share one forward/backward per step; each replica's loss depends only on its own
parameter slice, so the gradient of the summed loss is every replica's own gradient. Minibatches
are index tensors drawn from each replica's counter-based stream keyed by (key, epoch), so a
replica's trajectory does not depend on what else is batched, and a run resumed from a saved
(step, params, optimiser state) continues exactly as if it had never stopped.

Per-replica data other than inputs and targets (size masks, ...) is passed as ``aux`` tensors with
a leading replica axis: ``forward(params, x, **aux)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from grokbasin import rng
from grokbasin.store.rundir import RunDir, write_parquet
from grokbasin.train import optim
from grokbasin.types import Params

Forward = Callable[..., torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (step, params, optimiser state) -> None: called at every checkpoint step
OnCheckpoint = Callable[[int, Params, dict[str, torch.Tensor]], None]
# params -> {metric name: [R]}: extra per-replica metrics at each logged step (e.g. val accuracy)
Evaluate = Callable[[Params], dict[str, torch.Tensor]]

_SHUFFLE_TAG = 0x6E11


@dataclass
class FitResult:
    """Final params, the full-data loss curve per replica and in-memory checkpoints by step."""

    params: Params
    steps: list[int]
    losses: torch.Tensor  # [R, len(steps)] full training loss at each logged step
    checkpoints: dict[int, Params] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [R, len(steps)]
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # final optimiser state


def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows idx [R, B] of t [N, ...] (shared) or [R, N, ...] (per replica) -> [R, B, ...]."""
    if t.dim() == idx.dim():
        return t[idx]
    r = torch.arange(t.shape[0], device=t.device)[:, None]
    return t[r, idx]


def minibatches(keys: torch.Tensor, n: int, batch_size: int, epoch: int) -> list[torch.Tensor]:
    """Index tensors [R, B] covering one shuffled pass over n samples (last may be short)."""
    perm = rng.permutation(rng.fold_in(rng.fold_in(keys, _SHUFFLE_TAG), epoch), n)
    return [perm[:, lo : lo + batch_size] for lo in range(0, n, batch_size)]


def _as_r(v: float | torch.Tensor, R: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1).expand(R).clone()


@torch.no_grad()
def full_loss(
    forward: Forward,
    loss_fn: Loss,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    aux: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-replica loss on the whole data set: [R]."""
    return loss_fn(forward(params, x, **(aux or {})), y)


def fit(
    forward: Forward,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Loss,
    keys: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    optimizer: str = "sgd",
    lr: float | torch.Tensor = 1e-2,
    momentum: float = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    log_every: int = 10,
    checkpoint_every: int | None = None,
    run: RunDir | None = None,
    aux: dict[str, torch.Tensor] | None = None,
    evaluate: Evaluate | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    keep_checkpoints: bool = True,
    start_step: int = 0,
    state: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    """Train every replica for ``steps`` minibatch steps; log the full loss every ``log_every``.

    Resume: pass ``start_step`` with the params and optimiser ``state`` saved at that step (the
    minibatch stream is a pure function of (key, epoch), so the continuation is exact).
    """
    R, n = keys.shape[0], x.shape[-2]  # x [N, d] shared or [R, N, d] per replica
    aux = dict(aux or {})
    dev = keys.device
    hp = optim.Hyper(_as_r(lr, R, dev), _as_r(weight_decay, R, dev), momentum=momentum)
    state = state if state is not None else optim.init_state(optimizer, params)
    logged: list[int] = []
    curve: list[torch.Tensor] = []
    extra: dict[str, list[torch.Tensor]] = {}
    ckpts: dict[int, Params] = {}

    def record(step: int) -> None:
        if step % log_every == 0 or step == steps:
            logged.append(step)
            curve.append(full_loss(forward, loss_fn, params, x, y, aux))
            if evaluate is not None:
                with torch.no_grad():
                    for k, v in evaluate(params).items():
                        extra.setdefault(k, []).append(v)
        if checkpoint_every and (step % checkpoint_every == 0 or step == steps):
            if keep_checkpoints:
                ckpts[step] = {k: v.clone() for k, v in params.items()}
            if on_checkpoint is not None:
                on_checkpoint(step, params, state)

    if start_step == 0:
        record(0)
    per_epoch = -(-n // batch_size)
    step, epoch = start_step, start_step // per_epoch
    skip = start_step - epoch * per_epoch
    while step < steps:
        for idx in minibatches(keys, n, batch_size, epoch)[skip:]:
            leaf = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            loss = loss_fn(forward(leaf, take(x, idx), **aux), take(y, idx)).sum()
            grads = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values())), strict=True))
            params, state = optim.step(optimizer, params, grads, state, hp)
            step += 1
            record(step)
            if step >= steps:
                break
        epoch, skip = epoch + 1, 0
    losses = torch.stack(curve, dim=1) if curve else torch.zeros(R, 0, device=dev)
    ex = {k: torch.stack(v, dim=1) for k, v in extra.items()}
    result = FitResult(params, logged, losses, ckpts, ex, state)
    if run is not None:
        save_fit(result, run)
    return result


def save_fit(result: FitResult, run: RunDir) -> None:
    """Write the loss curves to metrics.parquet and each checkpoint as checkpoints/epoch_<step>."""
    rows = [
        {"step": s, "epoch": s, "replica": r, "train_loss": float(result.losses[r, i])}
        for i, s in enumerate(result.steps)
        for r in range(result.losses.shape[0])
    ]
    run.path.mkdir(parents=True, exist_ok=True)
    write_parquet(run.metrics, rows)
    for s, p in result.checkpoints.items():
        run.save_tensors(run.checkpoint(s), p, {"epoch": s, "step": s})

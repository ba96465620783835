"""Paper B's model families for the run engine: data, initial or exact parameters, forward, loss.

Every family builds ONE replica from its :class:`BRun` (data and parameters depend only on the
run's own config and seed, never on what else is batched), and the engine stacks replicas of
different ``model.size`` by zero-padding along the family's size axes. A 0/1 ``mask`` [R, size]
travels as the target's per-replica ``aux`` data so that padded units never reach the output, also
while SGLD noise moves them; zero-padded units get zero gradients, so training is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from grokbasin import rng
from grokbasin.experiments.paper_b.spec import BRun
from grokbasin.losses import accuracy, cross_entropy
from grokbasin.models import mlp as MLP
from grokbasin.models import regression as MR
from grokbasin.models import tms as TMS
from grokbasin.tasks import regression as TR
from grokbasin.tasks.modular import all_pairs, split_indices
from grokbasin.types import Params


@dataclass
class Replica:
    """One run's training data and starting (or exact) parameters, replica axis of length 1."""

    x: torch.Tensor
    y: torch.Tensor
    params: Params
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. validation split


@dataclass(frozen=True)
class FamilyDef:
    """How the engine trains and samples one family."""

    name: str
    # one replica (exact minimum when train.steps == 0); params={} when the flag is False
    make: Callable[[BRun, str, bool], Replica]
    forward: Callable[..., torch.Tensor]  # forward(params, x, mask=...) -> prediction
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # -> [R]
    size_axes: dict[str, int]  # parameter -> axis (after the replica axis) that grows with size
    dtype: torch.dtype = torch.float32
    evaluate: Callable[[Params, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


def _key(run: BRun, device: str) -> torch.Tensor:
    return rng.key([run.seed], device)


# ------------------------------------------------------------------ polynomial regressors


def _poly(run: BRun, device: str, params: bool = True) -> Replica:
    t = run.task
    data = TR.polynomial(
        _key(run, device), t.n or 500, t.c or 1.0, t.true_degree or 3, t.noise or 0.1
    )
    x, y = data.x.double(), data.y.double()
    feats = MR.poly_features(x, run.model.size)  # monomials once; zero-padded columns are inert
    return Replica(feats, y, MR.poly_lstsq(x, y, run.model.size) if params else {})


def _poly_forward(
    params: Params, x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    return MR.poly_forward_features(params, x, mask)


# ------------------------------------------------------------------ low-rank linear networks


def _low_rank(run: BRun, device: str, params: bool = True) -> Replica:
    t, r = run.task, run.model.size
    data = TR.low_rank_linear(_key(run, device), t.d or 10, r, t.n or 1000, t.noise or 0.0)
    if not params:
        return Replica(data.x, data.y, {})
    M = torch.linalg.lstsq(data.x, data.y).solution.transpose(1, 2)
    return Replica(data.x, data.y, MR.lowrank_from_matrix(M, r))


# ------------------------------------------------------------------ ReLU autoencoders


def _autoencoder(run: BRun, device: str, params: bool = True) -> Replica:
    t, r = run.task, run.model.size
    key = _key(run, device)
    data = TR.low_rank_autoencoder(key, t.d or 20, r, t.n or 1000)
    return Replica(data.x, data.y, MR.autoencoder_init(key, t.d or 20, r, run.model.width or 128))


# ------------------------------------------------------------------ TMS


def _tms(run: BRun, device: str, params: bool = True) -> Replica:
    key = _key(run, device)
    data = TR.tms_one_hot(key, run.task.features or 8, run.task.n or 1000)
    return Replica(data.x, data.y, TMS.init(key, run.task.features or 8, run.model.size))


def tms_forward(params: Params, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction ReLU(WᵀWx + b) with the hidden code masked to each replica's m units."""
    h = TMS.hidden(params, x)
    if mask is not None:
        h = h * mask[:, None, :]
    return torch.relu(torch.matmul(h, params["W"]) + params["b"][:, None, :])


def tms_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features, mean over samples (Elhage et al., unit importance)."""
    return (pred - target).square().sum(-1).mean(-1)


# ------------------------------------------------------------------ paper B's grokking MLP


def _grokking(run: BRun, device: str, params: bool = True) -> Replica:
    p, frac = run.task.p or 53, run.task.frac or 0.4
    pairs, labels = all_pairs(p, "add")
    n_train = int(frac * len(labels))
    tr, va = split_indices(len(labels), n_train, [run.seed])
    pairs, labels = pairs.to(device), labels.to(device)
    params = MLP.init_paper_b(_key(run, device), p, run.model.embed_dim or 12, run.model.size)
    extra = {"val_x": pairs[va], "val_y": labels[va][..., None]}
    return Replica(pairs[tr], labels[tr][..., None], params, extra)


grokking_forward = MLP.forward_paper_b


def grokking_loss(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per replica; labels [R, n, 1]."""
    return cross_entropy(pred, labels[..., 0])


def grokking_metrics(params: Params, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Train and validation accuracy and validation loss per replica."""
    m = extra.get("mask")
    tr = grokking_forward(params, extra["x"], m)
    va = grokking_forward(params, extra["val_x"], m)
    return {
        "train_acc": accuracy(tr, extra["y"][..., 0]),
        "val_loss": grokking_loss(va, extra["val_y"]),
        "val_acc": accuracy(va, extra["val_y"][..., 0]),
    }


FAMILIES: dict[str, FamilyDef] = {
    "polynomial": FamilyDef("polynomial", _poly, _poly_forward, MR.mse, {"a": 0}, torch.float64),
    "low_rank": FamilyDef("low_rank", _low_rank, MR.lowrank_forward, MR.mse, {"W1": 0, "W2": 1}),
    "autoencoder": FamilyDef(
        "autoencoder",
        _autoencoder,
        MR.autoencoder_forward,
        MR.mse,
        {"W2": 1, "b2": 0, "W3": 0},
    ),
    "tms": FamilyDef("tms", _tms, tms_forward, tms_loss, {"W": 0}),
    "grokking_mlp": FamilyDef(
        "grokking_mlp",
        _grokking,
        grokking_forward,
        grokking_loss,
        {"Wa": 1, "ba": 0, "Wb": 1, "bb": 0, "U": 0},
        evaluate=grokking_metrics,
    ),
}


def pad_stack(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-replica tensors [1, ...] into [R, ...], zero-padding every axis to the maximum."""
    out = {}
    for k in parts[0]:
        shapes = [p[k].shape for p in parts]
        full = [max(s[i] for s in shapes) for i in range(1, len(shapes[0]))]
        t = parts[0][k].new_zeros((len(parts), *full))
        for r, p in enumerate(parts):
            t[(r, *(slice(0, s) for s in p[k].shape[1:]))] = p[k][0]
        out[k] = t
    return out


def unpad(fam: FamilyDef, params: Params, r: int, size: int) -> Params:
    """Replica r's parameters cut back to its own size: [1, ...] (checkpoints are stored so)."""
    out = {}
    for k, v in params.items():
        t = v[r : r + 1]
        if k in fam.size_axes:
            t = t.narrow(1 + fam.size_axes[k], 0, size)
        out[k] = t.contiguous()
    return out


def units(run: BRun) -> int:
    """Length of the run's size axes: degree + 1 coefficients for polynomials, else model.size."""
    return run.model.size + (1 if run.family == "polynomial" else 0)


def size_mask(runs: list[BRun], device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[R, max units] 0/1 mask of each run's own units."""
    return MR.size_mask([units(r) for r in runs], device).to(dtype)

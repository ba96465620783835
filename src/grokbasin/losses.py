"""Per-replica losses and accuracy on [R, n, outputs] predictions and [R, n] integer labels."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def centred_mse(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1/(2n))·‖P⊥(Y − Ŷ)‖²_F per replica: residuals centred over the samples (SPEC §3.1)."""
    resid = F.one_hot(labels, pred.shape[-1]).to(pred.dtype) - pred
    resid = resid - resid.mean(dim=1, keepdim=True)
    return resid.square().sum(dim=(1, 2)) / (2 * pred.shape[1])


def authors_logged_mse(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The train/val loss paper A's authors *log*: their evaluation feeds one sample at a time to
    the same centred loss, so the centring runs over the p outputs and the division is by p.

    Per replica: mean over samples of ‖(y − ŷ) − mean_k(y − ŷ)‖² / (2p). Only for reading their
    logs side by side (≈ 0.5(1 − 1/p)/p at initialisation, 0.0093 at p = 53); training and the
    LLC use :func:`centred_mse`, as their code does.
    """
    resid = F.one_hot(labels, pred.shape[-1]).to(pred.dtype) - pred
    resid = resid - resid.mean(dim=2, keepdim=True)
    return resid.square().sum(dim=2).mean(dim=1) / (2 * pred.shape[-1])


def cross_entropy(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per replica."""
    R, n, c = pred.shape
    return (
        F.cross_entropy(pred.reshape(R * n, c), labels.reshape(R * n), reduction="none")
        .view(R, n)
        .mean(1)
    )


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of argmax hits per replica."""
    return (pred.argmax(dim=-1) == labels).to(pred.dtype).mean(dim=1)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "centred_mse": centred_mse,
    "cross_entropy": cross_entropy,
}


def centred_mse_per_sample(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[R, n] terms ½‖r_i − r̄‖² whose mean over the n samples is :func:`centred_mse` (the
    centring runs over the whole set given, as in the loss), for per-sample loss traces."""
    resid = F.one_hot(labels, pred.shape[-1]).to(pred.dtype) - pred
    resid = resid - resid.mean(dim=1, keepdim=True)
    return resid.square().sum(dim=2) / 2


def cross_entropy_per_sample(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[R, n] cross-entropy of each sample; its mean over samples is :func:`cross_entropy`."""
    R, n, c = pred.shape
    return F.cross_entropy(pred.reshape(R * n, c), labels.reshape(R * n), reduction="none").view(
        R, n
    )


PER_SAMPLE_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "centred_mse": centred_mse_per_sample,
    "cross_entropy": cross_entropy_per_sample,
}

"""Observables: losses on other data recorded at every draw, next to the sampling loss.

An observable is a named dataset (for built-in runs a subset of ``llc.subsets``: ``val``,
``class=k``...; for ``from_functional``/``from_module`` targets a user's (X, Y)) whose mean loss
the chain records at each draw, evaluated under ``torch.no_grad`` on the same parameters as the
draw's sampling loss, for every replica in one batched call per observable. For the names in
``per_sample`` the per-sample losses are kept too: ``SampleResult.sample_losses[name]`` is
[R, draws, m] (float32), the input of susceptibilities and Bayesian influence functions
(``llc.influence``). Their size is stated before sampling and refused above a budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from grokbasin.errors import ConfigError
from grokbasin.types import Params

TRACE_BUDGET_MB = 1024.0  # default memory budget for per-sample loss traces


class TraceBudgetError(ConfigError, ValueError):
    """Per-sample traces larger than the budget: a user setting (one line in the CLI) and a
    ValueError for Python callers, like the sampler's other input checks."""


def observe_by(
    names: Sequence[str],
    per_sample: Sequence[str],
    score: Callable[[Params, str, bool], torch.Tensor],
):
    """The ObserveFn of every target: ``score(params, name, each)`` is observable ``name``'s
    mean loss [R] (``each`` False) or its per-sample losses [R, m] (``each`` True); the names
    in ``per_sample`` keep their per-sample losses, and their mean is taken from them."""
    keep = set(per_sample)

    def observe(params: Params) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        means, samples = {}, {}
        for name in names:  # one batched call per observable (a few names)
            if name in keep:
                samples[name] = score(params, name, True).float()
                means[name] = samples[name].mean(1)
            else:
                means[name] = score(params, name, False).float()
        return means, samples

    return observe


def per_sample_by_reshape(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample losses [R, m] from a per-replica mean loss ``loss_fn(pred [R, m, ...], y)``:
    each sample is scored as a replica of one sample (right for losses that are means of
    per-sample terms, such as MSE or cross-entropy)."""

    def fn(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        R, m = pred.shape[:2]
        one = loss_fn(pred.reshape(R * m, 1, *pred.shape[2:]), y.reshape(R * m, 1, *y.shape[2:]))
        return one.view(R, m)

    return fn


def trace_bytes(replicas: int, draws: int, sizes: Mapping[str, int], names: Sequence[str]) -> int:
    """Bytes of the per-sample traces [R, draws, m] (float32) of observables ``names``."""
    return 4 * replicas * draws * sum(int(sizes[k]) for k in names)


def check_trace_budget(
    replicas: int,
    draws: int,
    sizes: Mapping[str, int],
    names: Sequence[str],
    budget_mb: float = TRACE_BUDGET_MB,
) -> int:
    """The per-sample traces' size in bytes, refused (TraceBudgetError, one line) above the
    budget."""
    size = trace_bytes(replicas, draws, sizes, names)
    if size > budget_mb * 2**20:
        m = sum(int(sizes[k]) for k in names)
        raise TraceBudgetError(
            f"per-sample loss traces need {size / 2**20:,.1f} MiB ({replicas} chains × {draws} "
            f"draws × {m} samples × 4 B), above trace_budget_mb = {budget_mb:g}; record fewer "
            "draws, chains or per-sample observables, or raise trace_budget_mb"
        )
    return size


def check_datasets(
    datasets: Mapping[str, tuple[torch.Tensor, torch.Tensor]], label: str
) -> dict[str, int]:
    """Observable name -> samples m of user datasets (X, Y); refused when X and Y disagree."""
    out = {}
    for name, pair in datasets.items():
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"{label}: observables[{name!r}] must be a pair (X, Y)")
        X, Y = pair
        if X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"{label}: observables[{name!r}] has {X.shape[0]} inputs and {Y.shape[0]} targets"
            )
        out[name] = int(X.shape[0])
    return out

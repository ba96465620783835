"""Named data subsets of a built-in modular run, as dataset rows per training replica.

Observables and the data-refined LLC name the data they use: ``train`` (each replica's training
split), ``val`` (its held-out pairs), ``all`` (every pair) or ``class=k`` (every pair whose label
is k). Every replica's subset has the same size, so a subset is one [R_train, m] tensor of rows
into ``tasks.modular.all_pairs`` that slices with the replicas like the training rows.
"""

from __future__ import annotations

import torch

from grokbasin.errors import ConfigError

NAMES_HELP = "train | val | all | class=K (0 <= K < p)"


def check_subset(name: str, p: int | None = None) -> str:
    """``name`` if it names a subset (and, given p, a class that exists), else ConfigError."""
    if name in ("train", "val", "all"):
        return name
    if name.startswith("class="):
        k = name.removeprefix("class=")
        if k.isdigit() and (p is None or int(k) < p):
            return name
    raise ConfigError(f"subset {name!r} is not one of {NAMES_HELP}" + (f", p = {p}" if p else ""))


def subset_rows(cfg, name: str) -> torch.Tensor:
    """Rows [R_train, m] into the all-pairs dataset of subset ``name`` for each training replica
    of RunConfig ``cfg``."""
    from grokbasin.tasks.modular import all_pairs
    from grokbasin.train.loop import make_setup

    check_subset(name, cfg.task.p)
    if name in ("train", "val"):
        task = make_setup(cfg).task
        return (task.train_idx if name == "train" else task.val_idx).cpu()
    R = len(cfg.train.replicas())
    _, y = all_pairs(cfg.task.p, cfg.task.op)
    keep = torch.ones_like(y, dtype=torch.bool) if name == "all" else y == int(name[6:])
    return torch.nonzero(keep).squeeze(1).expand(R, -1).clone()

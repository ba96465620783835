"""Named data subsets of a built-in modular run, as dataset rows per training replica.

Observables and the data-refined LLC name the data they use: ``train`` (each replica's training
split), ``val`` (its held-out pairs), ``all`` (every pair) or ``class=k`` (every pair whose label
is k). Every replica's subset has the same size, so a subset is one [R_train, m] tensor of rows
into ``tasks.modular.all_pairs`` that slices with the replicas like the training rows.
"""

from __future__ import annotations

import torch

from grokbasin.subset_names import NAMES_HELP, check_subset

__all__ = ["NAMES_HELP", "check_subset", "subset_rows"]


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

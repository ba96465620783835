"""Weight-restricted LLC: restriction specs (``grokbasin.restrictions``) turned into 0/1 masks.

:func:`param_masks` is the pure helper: parameter shapes and a list of patterns in, one boolean
mask per parameter out. Attention heads: a :data:`HeadLayout` says, per parameter, which axis of
its per-replica shape is laid out as [groups, heads, head_dim] (q/k/v stacked: groups 3), so
``PATTERN#head=H`` selects head H's slice. :func:`replica_masks` stacks the masks of several
restrictions into per-replica masks [R, ...] with one gather, so all restrictions run in one
sampler call as more replicas (the restriction is one more factor of the replica layout).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import torch

from grokbasin.errors import ConfigError
from grokbasin.restrictions import split_pattern

Shapes = Mapping[str, tuple[int, ...]]
HeadLayout = dict[str, tuple[int, int, int]]
"""Parameter name -> (axis of its per-replica shape, groups, heads) for per-head slicing."""


def transformer_heads(names: Sequence[str], heads: int) -> HeadLayout:
    """Head layout of ``grokbasin.models.transformer``: Wqkv [D, 3D] and bqkv [3D] split their
    3D axis as [q/k/v, head, dh]; Wo [D, D] reads head h from input rows h·dh..(h+1)·dh."""
    out: HeadLayout = {}
    for k in names:
        if k.endswith(".Wqkv"):
            out[k] = (1, 3, heads)
        elif k.endswith(".bqkv"):
            out[k] = (0, 3, heads)
        elif k.endswith(".Wo"):
            out[k] = (0, 1, heads)
    return out


def module_heads(module: torch.nn.Module) -> HeadLayout:
    """Head layout of every ``nn.MultiheadAttention`` in a module (packed in_proj [3D, D] and
    in_proj_bias [3D]: [q/k/v, head, dh] on axis 0; out_proj.weight [D, D]: head on axis 1)."""
    out: HeadLayout = {}
    for prefix, m in module.named_modules():
        if isinstance(m, torch.nn.MultiheadAttention) and m.in_proj_weight is not None:
            p = f"{prefix}." if prefix else ""
            out[f"{p}in_proj_weight"] = (0, 3, m.num_heads)
            if m.in_proj_bias is not None:
                out[f"{p}in_proj_bias"] = (0, 3, m.num_heads)
            out[f"{p}out_proj.weight"] = (1, 1, m.num_heads)
    return out


def param_masks(
    shapes: Shapes, patterns: Sequence[str], heads: HeadLayout | None = None, name: str = "?"
) -> dict[str, torch.Tensor]:
    """Boolean masks (one per parameter, its per-replica shape) selecting what ``patterns`` name.

    A pattern matching no parameter, or a ``#head=H`` pattern matching no attention weights or
    naming a head that does not exist, is a one-line ConfigError naming the pattern and what
    exists.
    """
    heads = heads or {}
    masks = {k: torch.zeros(s, dtype=torch.bool) for k, s in shapes.items()}
    for pattern in patterns:
        glob, head = split_pattern(pattern)
        hit = [k for k in shapes if fnmatch.fnmatchcase(k, glob)]
        where = f"restrict: pattern {pattern!r} of restriction {name!r}"
        if not hit:
            raise ConfigError(f"{where} matches no parameter; the parameters are {sorted(shapes)}")
        if head is None:
            for k in hit:
                masks[k][...] = True
            continue
        hit = [k for k in hit if k in heads]
        if not hit:
            have = sorted(heads) or "none (no attention weights with heads)"
            raise ConfigError(f"{where} matches no attention weights; those are {have}")
        for k in hit:
            axis, groups, n_heads = heads[k]
            if head >= n_heads:
                raise ConfigError(f"{where}: head {head} does not exist; {k} has {n_heads} heads")
            s = shapes[k]
            view = masks[k].view(
                *s[:axis], groups, n_heads, s[axis] // (groups * n_heads), *s[axis + 1 :]
            )
            view.select(axis + 1, head).fill_(True)
    return masks


def restriction_masks(
    shapes: Shapes, restrict: Mapping[str, Sequence[str]], heads: HeadLayout | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`param_masks` of every named restriction (all validated before any is used)."""
    return {name: param_masks(shapes, pats, heads, name) for name, pats in restrict.items()}


def replica_masks(
    shapes: Shapes,
    variants: Sequence[Mapping[str, torch.Tensor] | None],
    which: torch.Tensor,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Per-replica 0/1 masks [R, ...]: replica r gets ``variants[which[r]]`` (None: every weight
    sampled), gathered from the stacked variants in one indexing per parameter."""
    idx = which.to(device=device, dtype=torch.long)
    out = {}
    for k, s in shapes.items():
        stack = torch.stack(
            [torch.ones(s, dtype=torch.bool) if v is None else v[k] for v in variants]
        ).to(device)
        out[k] = stack[idx].float()
    return out

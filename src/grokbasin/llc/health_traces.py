"""Recorded sampler-health traces next to the loss traces (opt-in: ``llc.record_norms``/``mala``).

RUN_DIR/llc_traces/<sampler_hash>.health.safetensors holds, per checkpoint E,
``epoch_<E>.<norm>`` -> [train replicas, nβ, chains, T]: the gradient, localisation, weight-decay,
noise and distance-from-w* norms of every sampler step (burn-in included) thinned to at most
:data:`MAX_POINTS` steps, and ``epoch_<E>.mala_accept`` -> [train replicas, nβ, chains], the mean
MALA acceptance. The kept step numbers and the burn-in are in the metadata; the file carries the
store's checksum like every tensor file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grokbasin.store.rundir import RunDir

MAX_POINTS = 200
"""Most steps kept per norm trace: enough to see burn-in and drift, small on disk."""
ACCEPT = "mala_accept"


def health_path(run_path: Path, sampler_hash: str) -> Path:
    """Where a sampler's health traces live: next to its loss traces."""
    return Path(run_path) / "llc_traces" / f"{sampler_hash}.health.safetensors"


def kept_steps(steps: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Every k-th step of ``steps`` (k the smallest that keeps at most ``max_points``), plus the
    last step so the end of the chain is always shown."""
    if steps <= 0:
        return np.zeros(0, dtype=np.int64)
    k = -(-steps // max_points)
    idx = np.arange(0, steps, k, dtype=np.int64)
    return idx if idx[-1] == steps - 1 else np.append(idx[: max_points - 1], steps - 1)


def per_group(
    norms: Mapping[str, np.ndarray] | None,
    accept: np.ndarray | None,
    shape: tuple[int, int, int],
    max_points: int = MAX_POINTS,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Norms [R, steps] -> thinned [G, B, C, T] and MALA acceptance [R] -> [G, B, C] (R = G·B·C),
    with the kept step numbers."""
    out: dict[str, np.ndarray] = {}
    steps = np.zeros(0, dtype=np.int64)
    for name, v in (norms or {}).items():
        v = np.asarray(v, dtype=np.float32)
        steps = kept_steps(v.shape[1], max_points)
        out[name] = v[:, steps].reshape(*shape, len(steps))
    if accept is not None:
        out[ACCEPT] = np.asarray(accept, dtype=np.float32).reshape(shape)
    return out, steps


def write_health(
    run: RunDir,
    sampler_hash: str,
    arrays: Mapping[str, np.ndarray],
    steps: np.ndarray,
    burnin: int,
    groups_by_epoch: Mapping[int, Sequence[int]],
) -> None:
    """Merge the given checkpoints' health arrays (group axis first) into the run's file."""
    if not arrays:
        return
    path = health_path(run.path, sampler_hash)
    tensors = run.load_tensors(path)[0] if path.exists() else {}
    for e, gs in groups_by_epoch.items():
        for name, a in arrays.items():
            tensors[f"epoch_{e}.{name}"] = torch.from_numpy(np.ascontiguousarray(a[list(gs)]))
    meta = {
        "steps": [int(s) for s in steps],
        "burnin": int(burnin),
        "layout": "replica,nbeta,chain,step",
    }
    run.save_tensors(path, tensors, meta)


def read_health(run: RunDir, sampler_hash: str) -> tuple[dict[int, dict[str, np.ndarray]], dict]:
    """Epoch -> {name: array} and the metadata; ({}, {}) when nothing was recorded."""
    path = health_path(run.path, sampler_hash)
    if not path.exists():
        return {}, {}
    tensors, meta = run.load_tensors(path)
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, t in tensors.items():
        ep, _, name = key.partition(".")
        out.setdefault(int(ep.removeprefix("epoch_")), {})[name] = t.numpy()
    return out, meta


def meta_of(meta: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """(kept step numbers, burn-in) from a health file's metadata."""
    return np.asarray(meta.get("steps", []), dtype=np.int64), int(meta.get("burnin", 0))


__all__ = ["MAX_POINTS", "health_path", "kept_steps", "per_group", "read_health", "write_health"]

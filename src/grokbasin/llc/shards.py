"""Split the replica axis into contiguous ranges and run a function on each in its own CPU thread.

Knows nothing about samplers or targets. :func:`take` is the one generic slice: every tensor
(in dicts, tuples and dataclasses, recursively) is cut to replicas [lo, hi) along its leading
axis, so whatever carries per-replica data (centre, inputs, masks, aux tensors, hyperparameters,
keys) is sharded by the same rule, and anything not per-replica must live outside tensors passed
here (closures, ints, strings). Shards never synchronise and each thread has one intra-op thread,
so a busy core slows one shard instead of stalling every op at an OpenMP barrier
(BENCHMARKS.md, "Design measurements").
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from grokbasin.device import intra_op_threads

T = TypeVar("T")


def take(tree: Any, lo: int, hi: int) -> Any:
    """``tree`` with every tensor cut to replicas lo..hi-1 (leading axis); the rest unchanged."""
    if isinstance(tree, torch.Tensor):
        return tree[lo:hi]
    if isinstance(tree, dict):
        return {k: take(v, lo, hi) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(take(v, lo, hi) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        kw = {
            f.name: take(getattr(tree, f.name), lo, hi) for f in dataclasses.fields(tree) if f.init
        }
        return dataclasses.replace(tree, **kw)
    return tree


def bounds(replicas: int, device: torch.device, workers: int | None) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) replica ranges, one per CPU worker (default: torch's thread count, so
    a process pool's per-worker share is respected); one range off the CPU."""
    if workers is not None and workers < 1:
        raise ValueError(f"cpu_workers must be >= 1, got {workers}")
    n = workers or torch.get_num_threads()
    if torch.device(device).type != "cpu":
        n = 1
    n = max(1, min(n, replicas))
    cuts = [replicas * i // n for i in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def map_ranges(
    fn: Callable[[Any, float], T],
    tree: Any,
    replicas: int,
    device: torch.device,
    workers: int | None = None,
    cancel: threading.Event | None = None,
) -> list[T]:
    """[fn(take(tree, lo, hi), share) for each range], ranges in parallel threads; ``share`` is
    the range's fraction of all replicas. One range runs in the calling thread on ``tree``.

    If the calling thread is interrupted (Ctrl-C), ``cancel`` is set before the threads are
    joined, so an ``fn`` that polls it stops at once instead of running to the end."""
    ranges = bounds(replicas, device, workers)
    with intra_op_threads(device, 1):
        if len(ranges) == 1:
            return [fn(tree, 1.0)]

        def run(r: tuple[int, int]) -> T:
            torch.set_num_threads(1)  # OpenMP's thread count is per thread: a new one has all
            return fn(take(tree, *r), (r[1] - r[0]) / replicas)

        with ThreadPoolExecutor(len(ranges), thread_name_prefix="grokbasin-shard") as pool:
            try:
                return list(pool.map(run, ranges))
            except BaseException:
                if cancel is not None:
                    cancel.set()
                raise

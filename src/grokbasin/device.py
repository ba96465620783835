"""Resolve the ``device`` setting to a usable torch device, or say clearly why not."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from grokbasin.errors import ConfigError


def resolve(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"device: {name!r} is not a device; use cpu, cuda, cuda:N, mps or auto"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {name!r} requested but CUDA is not available here; use cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device: {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"device: {name!r} requested but MPS is not available here; use cpu or auto"
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device: {name!r} is not supported; use cpu, cuda, cuda:N, mps or auto")
    return str(dev)


@contextmanager
def intra_op_threads(device: str | torch.device, n: int | None = 1) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads on a CPU (restored afterwards; None: unchanged).

    Replica batching makes each op one large kernel, so a second OpenMP thread gains little on a
    2-core machine, while on a busy one the per-op barriers stall every op (BENCHMARKS.md).
    """
    before = torch.get_num_threads()
    if torch.device(device).type == "cpu" and n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def memory_capacity(device: str | torch.device) -> int:
    """Total memory of the device in bytes (RAM for the CPU and MPS, the card for CUDA)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev.index or 0).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def gib(n: float) -> str:
    """A byte count in the largest binary unit that keeps it >= 1."""
    for unit, k in (("PiB", 50), ("TiB", 40), ("GiB", 30)):
        if n >= 2**k:
            return f"{n / 2**k:,.1f} {unit}"
    return f"{n / 2**20:,.0f} MiB"


def check_fits(needed: int, device: str | torch.device, what: str, hint: str) -> None:
    """Refuse, before any work, a computation whose estimated memory exceeds the device's."""
    have = memory_capacity(device)
    if needed > have:
        raise ConfigError(
            f"{what} needs about {gib(needed)} of memory but {device} has {gib(have)}; {hint}"
        )

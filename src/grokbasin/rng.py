"""Counter-based random numbers with one independent stream per replica.

Every random draw is a pure function of (replica key, purpose, counter), computed with integer
hashing in plain tensor ops. A replica's numbers therefore never depend on which other replicas
share the batch, on the device, or on how work was split and resumed, which is what replica
batching (SPEC §4) needs and what one global ``torch.Generator`` cannot give.

Keys are int32 tensors of shape [R]; arithmetic wraps modulo 2**32 (two's complement), and right
shifts are made logical by masking, so the bit patterns equal those of the unsigned hash.
"""

from __future__ import annotations

import math

import torch


def _i32(c: int) -> int:
    """An unsigned 32-bit constant as the int32 with the same bits."""
    return c - (1 << 32) if c >= (1 << 31) else c


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int32 bit patterns."""
    return (x >> s) & ((1 << (32 - s)) - 1)


_C1, _C2, _GOLD, _TAG = _i32(0x7FEB352D), _i32(0x846CA68B), _i32(0x9E3779B9), _i32(0x85EBCA6B)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """The 'lowbias32' integer hash: a bijection on 32-bit patterns with strong avalanche."""
    x = x ^ _shr(x, 16)
    x = x * _C1
    x = x ^ _shr(x, 15)
    x = x * _C2
    return x ^ _shr(x, 16)


def key(
    seeds: torch.Tensor | list[int] | int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Keys [R] from integer seeds (any Python int; folded to 32 bits first)."""
    s = torch.as_tensor(seeds, dtype=torch.int64, device=device).reshape(-1)
    lo, hi = _to_i32(s & 0xFFFFFFFF), _to_i32((s >> 32) & 0xFFFFFFFF)
    return mix32(mix32(lo) ^ mix32(hi ^ _GOLD))


def _to_i32(u: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) to int32 with the same bits."""
    return torch.where(u >= (1 << 31), u - (1 << 32), u).to(torch.int32)


def fold_in(keys: torch.Tensor, data: int) -> torch.Tensor:
    """New keys derived from ``keys`` and an integer tag (a purpose, a step or an epoch)."""
    d = _i32(int(data) & 0xFFFFFFFF)
    tag = mix32(torch.tensor(d, dtype=torch.int32, device=keys.device) ^ _TAG)
    return mix32(keys ^ tag)


def bits(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[R, n] uniformly distributed 32-bit patterns (int32); two hash rounds per value."""
    i = torch.arange(n, dtype=torch.int32, device=keys.device)
    k = keys[:, None]
    return mix32(mix32(i ^ k) ^ mix32(k ^ _TAG))


def uniform(keys: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """[R, *shape] uniform on the open interval (0, 1), 24 random bits each."""
    u = (_shr(bits(keys, math.prod(shape)), 8).to(dtype) + 0.5) * (1.0 / (1 << 24))
    return u.reshape(keys.shape[0], *shape)


def normal(keys: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """[R, *shape] standard normal, by the inverse CDF of ``uniform``."""
    u = uniform(keys, shape, dtype=dtype)
    return torch.special.erfinv(u.mul_(2.0).sub_(1.0)).mul_(math.sqrt(2.0))


def permutation(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[R, n] one random permutation of range(n) per replica (int64 indices)."""
    return torch.argsort(bits(keys, n), dim=1, stable=True)


def randint(keys: torch.Tensor, high: int, shape: tuple[int, ...]) -> torch.Tensor:
    """[R, *shape] int64 integers uniform on [0, high) (modulo bias below high / 2**24)."""
    u = _shr(bits(keys, math.prod(shape)), 8).to(torch.int64)
    return (u % high).reshape(keys.shape[0], *shape)

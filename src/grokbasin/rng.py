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
    return fold_in_many(keys, [data])[..., 0]


def fold_in_many(keys: torch.Tensor, data: list[int] | range) -> torch.Tensor:
    """[*keys.shape, len(data)]: ``fold_in(keys, d)`` for every d at once (same bits)."""
    d = torch.tensor(
        [_i32(int(v) & 0xFFFFFFFF) for v in data], dtype=torch.int32, device=keys.device
    )
    return mix32(keys[..., None] ^ mix32(d ^ _TAG))


def bits(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[R, n] uniformly distributed 32-bit patterns (int32); two hash rounds per value."""
    i = torch.arange(n, dtype=torch.int32, device=keys.device)
    k = keys[:, None]
    return mix32(mix32(i ^ k) ^ mix32(k ^ _TAG))


def uniform(keys: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """[R, *shape] uniform on the open interval (0, 1), 23 random bits each.

    (k + 0.5)·2⁻²³ for k < 2²³ lies in [2⁻²⁴, 1 − 2⁻²⁴], both exactly representable in float32,
    so no value rounds to 0 or 1 (24 bits would round 1 − 2⁻²⁵ up to 1 and make erfinv infinite).
    """
    u = (_shr(bits(keys, math.prod(shape)), 9).to(dtype) + 0.5) * (1.0 / (1 << 23))
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


# --- Fast normals for samplers: one SplitMix64 hash gives two normals --------------------------
#
# Replica r's stream for counter t is a block of the SplitMix64 sequence (Steele, Lea & Flood
# 2014, which passes BigCrush): s_rt + i·φ (φ = 0x9E3779B97F4A7C15, i < ceil(n/2)) hashed by its
# 64-bit finaliser, with a start s_rt = mix64(key_r·2³² + t) that is itself hashed, so blocks of
# different (replica, counter) pairs sit at unrelated places on the 2⁶⁴ cycle (overlap odds ~
# streams²·n/2⁶⁴). Each 64-bit word gives two 32-bit uniforms u₁, u₂ and Box–Muller turns them
# into two normals: radius √(−2 ln u₁) (tail cut at 6.7σ) and angle 2πw, w = u₂ − ½. cos 2πw and
# sin 2πw come from fixed polynomials in w² (absolute error < 5e-7; float32 sin's own is 2e-7):
# library sin and cos were a third of the stream's cost on a CPU. A value depends only
# on (key, counter, element index); all work is in place in preallocated buffers.


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= (1 << 63) else c


# SplitMix64's Weyl increment and finaliser multipliers (unsigned), shared with llc.cpu_kernels
SPLITMIX64 = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_PHI64, _M64A, _M64B = (_i64(c) for c in SPLITMIX64)
# least-squares fits on w ∈ [−½, ½]: sin(2πw) ≈ w·Σ S_k w^2k, cos(2πw) ≈ Σ C_k w^2k
SIN_POLY = (
    6.2831827932940385,
    -41.341419375071474,
    81.59613848541618,
    -76.57968507422852,
    41.203731292378585,
    -12.268840194963092,
)
COS_POLY = (
    0.9999999890584856,
    -19.73920449927408,
    64.93911745030452,
    -85.45013934672254,
    60.167629372346404,
    -25.967593074131116,
    6.5286491801761874,
)


def mix64_(z: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser, in place on int64 bit patterns (``tmp``: same-shape scratch)."""
    for s, c in ((30, _M64A), (27, _M64B), (31, None)):
        torch.bitwise_right_shift(z, s, out=tmp)
        tmp.bitwise_and_((1 << (64 - s)) - 1)  # logical shift
        z.bitwise_xor_(tmp)
        if c is not None:
            z.mul_(c)  # wraps modulo 2**64
    return z


def stream_starts(keys: torch.Tensor, counters: range) -> torch.Tensor:
    """[R, T] int64 SplitMix64 block starts for (replica key, counter), T = len(counters)."""
    t = torch.tensor([int(c) & 0xFFFFFFFF for c in counters], dtype=torch.int64, device=keys.device)
    z = ((keys.to(torch.int64) & 0xFFFFFFFF) << 32)[:, None] | t
    return mix64_(z, torch.empty_like(z))


def _horner_(x: torch.Tensor, coeffs: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Σ coeffs[k]·x^k into ``out`` (0-dim coefficient tensors; one multiply-add pass each)."""
    torch.mul(x, coeffs[-1], out=out).add_(coeffs[-2])
    for c in coeffs[-3::-1]:
        torch.addcmul(c, out, x, out=out)
    return out


class StreamStarts:
    """[R] block starts of ``keys``' streams at any counter, hashed ``block`` counters at once."""

    def __init__(self, keys: torch.Tensor, block: int = 64):
        self.keys, self.block = keys, block
        self._first, self._starts = 0, None

    def __call__(self, counter: int) -> torch.Tensor:
        if self._starts is None or not 0 <= counter - self._first < self.block:
            self._first = counter
            self._starts = stream_starts(self.keys, range(counter, counter + self.block))
        return self._starts[:, counter - self._first]


class NormalStream:
    """[R, n] standard normals per call from preallocated buffers (see the block comment above).

    ``stream(keys, counter)`` returns a view of an internal buffer that the next call overwrites.
    """

    def __init__(self, replicas: int, n: int, device=None, dtype=torch.float32):
        m = (n + 1) // 2
        self.shape, self.m = (replicas, n), m
        self.weyl = torch.arange(m, dtype=torch.int64, device=device).mul_(_PHI64)
        self.z = torch.empty(replicas, m, dtype=torch.int64, device=device)
        self.tmp = torch.empty_like(self.z)
        self.w_shift = torch.tensor(2.0**-33 - 0.5, dtype=dtype, device=device)
        self.out = torch.empty(replicas, 2 * m, dtype=dtype, device=device)
        self.w, self.w2, self.poly = (
            torch.empty(replicas, m, dtype=dtype, device=device) for _ in range(3)
        )
        self.sin_c, self.cos_c = (
            [torch.tensor(c, dtype=dtype, device=device) for c in cs] for cs in (SIN_POLY, COS_POLY)
        )
        self._starts: StreamStarts | None = None

    def __call__(self, keys: torch.Tensor, counter: int) -> torch.Tensor:
        z, tmp, m = self.z, self.tmp, self.m
        if keys.shape != self.shape[:1]:
            raise ValueError(f"NormalStream for {self.shape[0]} replicas got keys {keys.shape}")
        if self._starts is None or self._starts.keys is not keys:
            self._starts = StreamStarts(keys)
        torch.add(self.weyl[None, :], self._starts(counter)[:, None], out=z)
        mix64_(z, tmp)
        radius, sin = self.out[:, :m], self.out[:, m:]
        torch.bitwise_right_shift(z, 32, out=tmp)
        radius.copy_(tmp.bitwise_and_(0xFFFFFFFF))  # u1 = (hi32 + ½)/2³² in (0, 1]
        radius.add_(0.5).mul_(2.0**-32).log_().mul_(-2.0).sqrt_()
        w = self.w.copy_(z.bitwise_and_(0xFFFFFFFF))  # w = u2 − ½ = (lo32 + ½)/2³² − ½
        w = torch.add(self.w_shift, w, alpha=2.0**-32, out=w)
        w2 = torch.mul(w, w, out=self.w2)
        torch.mul(_horner_(w2, self.sin_c, self.poly), w, out=sin).mul_(radius)
        radius.mul_(_horner_(w2, self.cos_c, self.poly))
        return self.out[:, : self.shape[1]]


def normal_pairs(keys: torch.Tensor, counter: int, n: int, dtype=torch.float32) -> torch.Tensor:
    """[R, n] standard normals from :class:`NormalStream` (a fresh tensor; same values)."""
    return NormalStream(keys.shape[0], n, keys.device, dtype)(keys, counter).clone()

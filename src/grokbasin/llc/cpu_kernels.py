"""Numba kernels for the CPU sampler's memory-bound work, where eager PyTorch makes many passes.

``sgld_update``: in eager PyTorch the noise stream and the update are ~30 passes over [R, N]
tensors per step, about as costly as the gradient's matmuls. Here one compiled loop per replica
hashes, transforms and applies the noise without storing it (speed-up in ``BENCHMARKS.md``).
The stream is ``rng.NormalStream``'s, element for element (same SplitMix64 words, same
Box–Muller mapping and angle polynomials), evaluated in float64, so it sits closer to the exact
normals than the float32 torch version (< 1e-6 against < 1e-5 absolute). ``log`` is written out
as exponent plus an atanh series so that the loop vectorises without a vector math library.
``gather_pairs`` / ``scatter_pairs``: the quadratic net's hidden layer and its backward, one
pass each instead of three or four (``fast_quadratic``).

Compiled on first use and cached on disk (``cache=True``). ``available()`` is False where numba
is missing; callers then use their torch ops.
"""

from __future__ import annotations

import math

import numpy as np

from grokbasin import rng

try:
    import numba
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; the torch path still works
    numba = None


def available() -> bool:
    return numba is not None


if numba is not None:
    _PHI, _M1, _M2 = (np.uint64(c) for c in rng.SPLITMIX64)
    _S, _C = rng.SIN_POLY, rng.COS_POLY
    _LN2, _SQRT2 = math.log(2.0), math.sqrt(2.0)
    _MANT, _ONE = np.uint64(0x000FFFFFFFFFFFFF), np.uint64(0x3FF0000000000000)

    @intrinsic
    def _bits(typingctx, x):  # noqa: ARG001 - numba's intrinsic signature
        """The IEEE bits of a float64 as uint64 (a bitcast, so the loop still vectorises)."""

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.bitcast(args[0], context.get_value_type(types.uint64))

        return types.uint64(types.float64), codegen

    @intrinsic
    def _float(typingctx, x):  # noqa: ARG001
        """The float64 with the given IEEE bits."""

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.bitcast(args[0], context.get_value_type(types.float64))

        return types.float64(types.uint64), codegen

    @numba.njit(inline="always", cache=True)
    def _log(x: float) -> float:
        """ln x for a positive normal float64: x = 2^e·m, m ∈ [√½, √2), ln m = 2·atanh(t)
        with t = (m − 1)/(m + 1), |t| ≤ 0.172, series to t¹³ (error < 1e-12)."""
        b = _bits(x)
        e = np.int64(b >> np.uint64(52)) - 1023
        m = _float((b & _MANT) | _ONE)
        big = m > _SQRT2
        m = m * 0.5 if big else m
        e = e + 1 if big else e
        t = (m - 1.0) / (m + 1.0)
        t2 = t * t
        p = 2.0 / 13.0
        p = p * t2 + 2.0 / 11.0
        p = p * t2 + 2.0 / 9.0
        p = p * t2 + 2.0 / 7.0
        p = p * t2 + 2.0 / 5.0
        p = p * t2 + 2.0 / 3.0
        p = p * t2 + 2.0
        return e * _LN2 + t * p

    @numba.njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
    def fill_normals(start, row):
        """``row`` [2m] ← one replica's ``NormalStream`` block for SplitMix64 start ``start``."""
        m = row.shape[0] // 2
        for j in range(m):
            z = start + np.uint64(j) * _PHI
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            z = z ^ (z >> np.uint64(31))
            u1 = (np.float64(z >> np.uint64(32)) + 0.5) * 2.0**-32
            w = (np.float64(z & np.uint64(0xFFFFFFFF)) + 0.5) * 2.0**-32 - 0.5
            radius = math.sqrt(-2.0 * _log(u1))
            w2 = w * w
            s = _S[5]
            for k in (4, 3, 2, 1, 0):
                s = s * w2 + _S[k]
            c = _C[6]
            for k in (5, 4, 3, 2, 1, 0):
                c = c * w2 + _C[k]
            row[j] = radius * c
            row[m + j] = radius * w * s

    @numba.njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
    def sgld_update(params, grads, drift0, a, c, s, starts, row):
        """Per replica r: draw its noise ξ into ``row``, then w ← a·w + b·w* + c·∇L + s·ξ.

        ``params``, ``grads``, ``drift0`` (b·w*): tuples of [R, n_k] arrays, the tensors of one
        replica laid end to end in noise order; a, c, s [R]; starts [R] uint64 block starts.
        """
        for r in range(starts.shape[0]):
            fill_normals(starts[r], row)
            ar, cr, sr = a[r], c[r], s[r]
            off = 0
            for k in range(len(params)):
                w, g, b = params[k], grads[k], drift0[k]
                for i in range(w.shape[1]):
                    w[r, i] = ar * w[r, i] + b[r, i] + cr * g[r, i] + sr * row[off + i]
                off += w.shape[1]

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def gather_pairs(table, ia, ib, h, h2):
        """Quadratic-net hidden layer: h[i] = table[ia[i]] + table[ib[i]] and h2 = h² (one pass)."""
        for i in range(ia.shape[0]):
            a, b = ia[i], ib[i]
            for k in range(table.shape[1]):
                v = table[a, k] + table[b, k]
                h[i, k] = v
                h2[i, k] = v * v

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def scatter_pairs(grad_table, ia, ib, dh, h):
        """Backward of :func:`gather_pairs` (with the 2 of d(h²)/dh folded into ``dh``): rows
        ia[i] and ib[i] of ``grad_table`` each gain dh[i]·h[i] (the rows differ: a < p ≤ p + b)."""
        for i in range(ia.shape[0]):
            a, b = ia[i], ib[i]
            for k in range(grad_table.shape[1]):
                v = dh[i, k] * h[i, k]
                grad_table[a, k] += v
                grad_table[b, k] += v

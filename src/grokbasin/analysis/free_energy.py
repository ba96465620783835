"""Free energy, transitions and paper B's Arrhenius-style rate test (SPEC §3.2, §3.8).

F_n ≈ n·L_n(w*) + λ·log n; between two checkpoints i → j,
ΔF = (λ̂_j − λ̂_i)·log n + n·(L_n(j) − L_n(i)). The hypothesis r ∝ exp(β_eff·ΔF) for the time r
spent before a transition is tested by regressing ΔF on log r across runs (slope = 1/β_eff),
with R² and a bootstrap interval over runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from grokbasin import rng

_BOOT_TAG = 0xB007


def free_energy(loss: np.ndarray | float, llc: np.ndarray | float, n: int) -> np.ndarray:
    """F_n ≈ n·L_n(w*) + λ·log n (the leading two terms of the local free energy)."""
    return n * np.asarray(loss, dtype=float) + np.asarray(llc, dtype=float) * math.log(n)


def delta_free_energy(
    llc_i: np.ndarray | float,
    llc_j: np.ndarray | float,
    loss_i: np.ndarray | float,
    loss_j: np.ndarray | float,
    n: int,
) -> np.ndarray:
    """ΔF = (λ̂_j − λ̂_i)·log n + n·(L_j − L_i): the free-energy change from checkpoint i to j."""
    return free_energy(loss_j, llc_j, n) - free_energy(loss_i, llc_i, n)


def grokking_times(
    epochs: np.ndarray,
    train_acc: np.ndarray,
    val_acc: np.ndarray,
    train_threshold: float = 1.0,
    val_threshold: float = 0.95,
) -> tuple[int, int] | None:
    """(i, j): first checkpoint with train acc ≥ 1 and first with val acc ≥ 0.95 at or after it."""
    e, tr, va = (np.asarray(a) for a in (epochs, train_acc, val_acc))
    hit = np.flatnonzero(tr >= train_threshold - 1e-12)
    if hit.size == 0:
        return None
    i = int(hit[0])
    later = np.flatnonzero((va >= val_threshold) & (np.arange(len(e)) >= i))
    return None if later.size == 0 else (int(e[i]), int(e[later[0]]))


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average with a window that shrinks at the ends (keeps the length)."""
    c = np.asarray(curve, dtype=float)
    if window <= 1 or c.size == 0:
        return c.copy()
    h = window // 2
    cs = np.concatenate([[0.0], np.cumsum(c)])
    lo = np.clip(np.arange(c.size) - h, 0, c.size)
    hi = np.clip(np.arange(c.size) + h + 1, 0, c.size)
    return (cs[hi] - cs[lo]) / (hi - lo)


@dataclass(frozen=True)
class Transition:
    """A fast drop of the smoothed loss: indices where it starts, peaks in rate and ends."""

    start: int
    at: int
    end: int
    drop: float  # decrease of the smoothed loss over [start, end]


def detect_transitions(
    loss: np.ndarray,
    window: int = 5,
    min_fraction: float = 0.1,
    rate_factor: float = 2.0,
    max_gap: int | None = None,
) -> list[Transition]:
    """Drops of the smoothed loss that are fast and ≥ ``min_fraction`` of its total decrease.

    A step is "fast" when the smoothed loss falls by more than ``rate_factor`` × the mean fall per
    step over the whole curve; runs of fast steps separated by ≤ ``max_gap`` (default: window)
    slow steps are merged, and a run is kept when its drop is ≥ min_fraction × (first − minimum).
    """
    s = smooth(loss, window)
    if s.size < 2:
        return []
    total = s[0] - s.min()
    if not total > 0:
        return []
    fall = -np.diff(s)
    fast = fall > rate_factor * total / (s.size - 1)
    gap = window if max_gap is None else max_gap
    runs: list[list[int]] = []
    for k in np.flatnonzero(fast):
        if runs and k - runs[-1][1] <= gap + 1:
            runs[-1][1] = int(k)
        else:
            runs.append([int(k), int(k)])
    out = []
    for a, b in runs:
        drop = float(s[a] - s[b + 1])
        if drop >= min_fraction * total:
            at = a + int(np.argmax(fall[a : b + 1]))
            out.append(Transition(a, at, b + 1, drop))
    return out


@dataclass(frozen=True)
class ArrheniusFit:
    """Least-squares line ΔF = slope·log r + intercept, its R² and a bootstrap slope interval."""

    slope: float
    intercept: float
    r2: float
    slope_ci: tuple[float, float]
    n: int
    level: float

    @property
    def beta_eff(self) -> float:
        """β_eff of r ∝ exp(β_eff·ΔF): the reciprocal slope."""
        return 1.0 / self.slope if self.slope else math.inf


def _linfit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched least squares over the last axis: slope, intercept."""
    xm, ym = x.mean(-1, keepdim=True), y.mean(-1, keepdim=True)
    sxx = (x - xm).square().sum(-1)
    slope = ((x - xm) * (y - ym)).sum(-1) / sxx.clamp_min(1e-300)
    return slope, ym[..., 0] - slope * xm[..., 0]


def arrhenius_fit(
    delta_f: np.ndarray, r: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> ArrheniusFit:
    """Regress ΔF on log r across runs; bootstrap (resampling runs) for the slope's interval."""
    y = torch.as_tensor(np.asarray(delta_f, dtype=float), dtype=torch.float64)
    x = torch.as_tensor(np.log(np.asarray(r, dtype=float)), dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"delta_f and r differ in length: {y.numel()} vs {x.numel()}")
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.numel())
    if n < 3 or float(x.std()) == 0.0:
        raise ValueError(f"need >= 3 runs with distinct times to fit, got {n}")
    slope, icpt = _linfit(x, y)
    resid = y - (slope * x + icpt)
    r2 = 1.0 - float(resid.square().sum() / (y - y.mean()).square().sum().clamp_min(1e-300))
    keys = rng.fold_in(rng.key(list(range(n_boot))), seed ^ _BOOT_TAG)
    idx = rng.randint(keys, n, (n,))
    bs, _ = _linfit(x[idx], y[idx])
    bs = bs[torch.isfinite(bs) & (x[idx].std(-1) > 0)]
    q = torch.quantile(bs, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return ArrheniusFit(float(slope), float(icpt), r2, (float(q[0]), float(q[1])), n, level)


def transition_pairs(steps: np.ndarray, transitions: list[Transition]) -> list[tuple[int, int]]:
    """(step_a, step_b) for consecutive transitions: the step just after each one ends."""
    ends = [int(np.asarray(steps)[min(t.end, len(steps) - 1)]) for t in transitions]
    return list(zip(ends[:-1], ends[1:], strict=True))

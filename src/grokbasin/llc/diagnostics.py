"""Health checks on SGLD loss traces (SPEC §3.3, §7): every LLC estimate carries flags.

A *group* is one estimate: one checkpoint x training replica x n*beta, with C chains of D draws
(after burn-in). Statistics are taken on the lambda-hat scale ``nbeta * (trace - init_loss)``,
whose per-chain mean is the chain's estimate. R-hat and ESS come from ArviZ (rank-normalised
split R-hat, bulk ESS), computed for all groups in one vectorised call.

Flags (short, stable names):

``nonfinite``
    the chain has a NaN/inf draw (or its init loss is not finite). Such chains are left out of
    every other group statistic.
``explosion``
    some draw exceeds ``max(init_loss, m) + k * sigma``, with m the median and sigma
    = 1.4826 * MAD of all finite draws of the group (robust to a minority of exploded draws),
    k = ``Thresholds.explosion_k`` (default 10). SPEC §7 writes ``init + k * sigma``; the group
    median replaces init because a healthy posterior sits lambda/nbeta above init, which for large
    lambda is many sigma.
``negative``
    the chain's lambda-hat (mean of its lambda-scale trace) is below zero.
``rhat``
    split R-hat across the group's chains exceeds ``Thresholds.rhat`` (1.1); needs >= 2 chains.
``low_ess``
    bulk ESS of the group (all chains pooled) is below ``Thresholds.min_ess`` (100): the Monte-Carlo
    error of lambda-hat is then more than a tenth of the posterior spread of the trace.
``nonstationary``
    a line fitted to each chain's lambda-scale trace over the second half of the draws implies a
    change Delta (mean slope x half length) with ``|Delta| > trend_z * SE(Delta)`` *and*
    ``|Delta| > trend_rel * |lambda-hat|`` (defaults 3 and 5%). SE(Delta) uses the long-run
    variance var(r) * (C * D) / ESS(r) of the residuals r about a line through each half, so
    autocorrelation widens it but the trend itself does not. Means burn-in was too short
    (SPEC §3.3: the paper's own settings fail this). ``trend`` reports Delta / |lambda-hat|
    (signed); NaN with fewer than ``min_trend_draws`` draws. Limitation: when the integrated
    autocorrelation time approaches half the draws, slow mixing and drift are indistinguishable
    (false-positive rate ~2% at AR(1) rho = 0.95 with 500 draws, ~20% at rho = 0.99); such
    groups also carry ``low_ess``.

Group ``flags`` is the sorted union of the chain flags and the group-level flags.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ArviZ announces its refactor with a FutureWarning on import
    import arviz as az

CHAIN_FLAGS = ("nonfinite", "explosion", "negative")
GROUP_FLAGS = ("rhat", "low_ess", "nonstationary")
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Thresholds:
    """Tunable limits of the health checks (see the module docstring for each rule)."""

    explosion_k: float = 10.0
    rhat: float = 1.1
    min_ess: float = 100.0
    trend_z: float = 3.0
    trend_rel: float = 0.05
    min_trend_draws: int = 16


def llc_scale(traces: np.ndarray, init_loss: np.ndarray, nbeta: np.ndarray) -> np.ndarray:
    """The lambda-hat-scale traces nbeta * (trace - init_loss): [G, C, D]."""
    t = np.asarray(traces, dtype=np.float64)
    nb = np.asarray(nbeta, dtype=np.float64)[:, None, None]
    return nb * (t - np.asarray(init_loss, dtype=np.float64)[..., None])


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence NumPy/ArviZ noise on degenerate input (constant traces, one chain)."""
    log = logging.getLogger("arviz")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _arviz_stats(x: np.ndarray, with_rhat: bool) -> tuple[np.ndarray, np.ndarray]:
    """(R-hat, bulk ESS) per group of x [G, C, D] in one ArviZ call each; NaN where undefined."""
    G, C, D = x.shape
    nan = np.full(G, np.nan)
    if G == 0 or D < 4:
        return nan, nan.copy()
    with _quiet():
        ds = az.convert_to_dataset({"v": np.moveaxis(x, 0, -1)})  # dims chain, draw, group
        ess = np.asarray(az.ess(ds, method="bulk")["v"].values, dtype=float).reshape(G)
        rhat = (
            np.asarray(az.rhat(ds)["v"].values, dtype=float).reshape(G)
            if with_rhat and C >= 2
            else nan
        )
    flat = np.ptp(x.reshape(G, -1), axis=1) == 0  # constant trace: ESS/R-hat undefined
    ess = np.where(flat, np.nan, ess)
    rhat = np.where(flat, np.nan, rhat)
    return rhat, ess


def _detrend_halves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line through each half of each chain: (second-half slopes, residuals)."""
    D = x.shape[-1]
    resid = np.empty_like(x)
    slope = np.zeros(x.shape[:-1])
    for lo, hi in ((0, D // 2), (D // 2, D)):
        y = x[..., lo:hi]
        t = np.arange(hi - lo, dtype=np.float64) - (hi - lo - 1) / 2.0
        yc = y - y.mean(axis=-1, keepdims=True)
        slope = (yc * t).sum(axis=-1) / float(np.sum(t * t))
        resid[..., lo:hi] = yc - slope[..., None] * t
    return slope, resid


def _trend(x: np.ndarray, th: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(Delta, SE(Delta)) of the second-half linear trend per group of x [G, C, D].

    The slope's standard error uses the long-run variance var(r) * (C * D) / ESS(r) of the
    residuals r about a line through each half: autocorrelation widens it, the trend does not.
    """
    G, C, D = x.shape
    h = D - D // 2
    if D < th.min_trend_draws or h < 4:
        return np.full(G, np.nan), np.full(G, np.nan)
    slope, resid = _detrend_halves(x)
    var = np.square(resid).sum(axis=(1, 2)) / (C * (D - 4))
    _, ess = _arviz_stats(resid, with_rhat=False)
    ok = np.isfinite(ess) & (ess > 0)
    long_run = var * np.clip(C * D / np.where(ok, ess, 1.0), 1.0, None)
    t = np.arange(h, dtype=np.float64) - (h - 1) / 2.0
    se_slope = np.sqrt(long_run / (C * float(np.sum(t * t))))
    return slope.mean(axis=1) * (h - 1), np.where(ok | (var == 0), se_slope, np.nan) * (h - 1)


def _group_stats(x: np.ndarray, th: Thresholds) -> dict[str, np.ndarray]:
    """R-hat, ESS, MCSE, trend and its SE per group of finite traces x [G, C, D]."""
    rhat, ess = _arviz_stats(x, with_rhat=True)
    delta, se = _trend(x, th)
    G = x.shape[0]
    sd = x.reshape(G, -1).std(axis=1)
    mcse = np.where(np.isfinite(ess) & (ess > 0), sd / np.sqrt(np.where(ess > 0, ess, 1.0)), np.nan)
    return {"rhat": rhat, "ess": ess, "mcse": mcse, "delta": delta, "delta_se": se}


def _chain_flags(
    traces: np.ndarray, init_loss: np.ndarray, lam: np.ndarray, finite: np.ndarray, th: Thresholds
) -> list[list[list[str]]]:
    """Per group, per chain: nonfinite / explosion / negative."""
    G, C, _ = traces.shape
    with _quiet():
        masked = np.where(finite[..., None], traces, np.nan).reshape(G, -1)
        med = np.nanmedian(masked, axis=1)  # NaN for a group with no finite chain
        mad = np.nanmedian(np.abs(masked - med[:, None]), axis=1) * _MAD_TO_SIGMA
        peak = np.where(finite[..., None], traces, -np.inf).max(axis=2)
        base = np.maximum(init_loss, med[:, None])
        tiny = 1e-12 * (1.0 + np.abs(base))  # constant traces must not flag on rounding
        exploded = finite & (peak > base + th.explosion_k * mad[:, None] + tiny)
        negative = finite & (lam < 0)
    out = []
    for g in range(G):
        rows = []
        for c in range(C):
            f = []
            if not finite[g, c]:
                f.append("nonfinite")
            if exploded[g, c]:
                f.append("explosion")
            if negative[g, c]:
                f.append("negative")
            rows.append(f)
        out.append(rows)
    return out


def diagnose(
    traces: np.ndarray,
    init_loss: np.ndarray,
    nbeta: np.ndarray,
    thresholds: Thresholds | None = None,
) -> list[dict[str, Any]]:
    """Health of each group of SGLD loss traces [G, C, D] (init_loss [G, C], nbeta [G]).

    Returns one dict per group: 'rhat', 'ess', 'mcse', 'trend' (floats, NaN where undefined),
    'flags' (list[str]) and 'chain_flags' (one list[str] per chain).
    """
    th = thresholds or Thresholds()
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim != 3:
        raise ValueError(f"traces must be [groups, chains, draws], got shape {traces.shape}")
    G, C, D = traces.shape
    init_loss = np.broadcast_to(np.asarray(init_loss, dtype=np.float64), (G, C))
    nbeta = np.broadcast_to(np.asarray(nbeta, dtype=np.float64).reshape(-1), (G,))
    finite = np.isfinite(traces).all(axis=2) & np.isfinite(init_loss) & (D > 0)
    with np.errstate(all="ignore"):
        x = llc_scale(traces, init_loss, nbeta)
        lam = np.where(finite, x.mean(axis=2) if D else np.nan, np.nan)
    chain_flags = _chain_flags(traces, init_loss, lam, finite, th)

    stats = {k: np.full(G, np.nan) for k in ("rhat", "ess", "mcse", "delta", "delta_se")}
    full = finite.all(axis=1)
    if full.any():
        for k, v in _group_stats(x[full], th).items():
            stats[k][full] = v
    for g in np.flatnonzero(~full & finite.any(axis=1)):  # rare: drop the diverged chains
        for k, v in _group_stats(x[g : g + 1, finite[g]], th).items():
            stats[k][g] = v[0]

    results = []
    for g in range(G):
        est = np.nanmean(lam[g]) if finite[g].any() else np.nan
        delta, se = stats["delta"][g], stats["delta_se"][g]
        trend = delta / abs(est) if np.isfinite(delta) and est != 0 else np.nan
        flags = {f for chain in chain_flags[g] for f in chain}
        if stats["rhat"][g] > th.rhat:
            flags.add("rhat")
        if stats["ess"][g] < th.min_ess:
            flags.add("low_ess")
        if abs(delta) > th.trend_z * se and abs(trend) > th.trend_rel:
            flags.add("nonstationary")
        results.append(
            {
                "rhat": float(stats["rhat"][g]),
                "ess": float(stats["ess"][g]),
                "mcse": float(stats["mcse"][g]),
                "trend": float(trend),
                "flags": sorted(flags),
                "chain_flags": chain_flags[g],
            }
        )
    return results


def to_inference_data(
    traces: np.ndarray,
    init_loss: np.ndarray,
    nbeta: np.ndarray,
    coords: Mapping[str, Sequence[Any]] | None = None,
) -> az.InferenceData:
    """ArviZ InferenceData of traces [G, C, D]: posterior 'llc' and 'loss' (chain, draw, group).

    ``coords`` optionally labels the groups, e.g. {"epoch": [...], "replica": [...]}, each of
    length G; they become coordinates on the 'group' dimension. init_loss and nbeta go to
    constant_data.
    """
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim == 2:
        traces = traces[None]
    G, C, _ = traces.shape
    init_loss = np.broadcast_to(np.asarray(init_loss, dtype=np.float64), (G, C))
    nbeta = np.broadcast_to(np.asarray(nbeta, dtype=np.float64).reshape(-1), (G,))
    with np.errstate(all="ignore"):
        llc = llc_scale(traces, init_loss, nbeta)
    with _quiet():
        idata = az.from_dict(
            posterior={"llc": np.moveaxis(llc, 0, -1), "loss": np.moveaxis(traces, 0, -1)},
            constant_data={"init_loss": init_loss, "nbeta": nbeta},
            coords={"group": np.arange(G), "chain": np.arange(C)},
            dims={
                "llc": ["group"],
                "loss": ["group"],
                "init_loss": ["group", "chain"],
                "nbeta": ["group"],
            },
        )
    for name, values in (coords or {}).items():
        vals = np.asarray(values)
        if vals.shape != (G,):
            raise ValueError(f"coordinate {name!r} needs {G} values, got shape {vals.shape}")
        idata.posterior = idata.posterior.assign_coords({name: ("group", vals)})
    return idata


__all__ = ["CHAIN_FLAGS", "GROUP_FLAGS", "Thresholds", "diagnose", "llc_scale", "to_inference_data"]

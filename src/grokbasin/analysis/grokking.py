"""Grokking metrics from a run's curves (SPEC §3.6, §3.7): t_mem, t_gen, delay, GSM, regime.

Inputs are per-checkpoint curves of one replica (epochs ascending). Thresholds are ≥ tests on
accuracies in [0, 1]. ``grokking_metrics`` applies everything to a whole metrics table (pyarrow
Table or list of row dicts with the columns of metrics.parquet) and returns one dict per replica.

Regime rule (precise):
- ``no generalisation``: validation accuracy never reaches ``gen_threshold`` (t_gen is None);
- ``grokking``: it does, training accuracy reached ``mem_threshold`` first, and the delay
  t_gen − t_mem exceeds max(``min_delay_checkpoints`` × checkpoint interval, ``rel_delay`` × t_mem),
  i.e. generalisation lags memorisation by more than checkpoint noise and by more than the time
  memorisation itself took;
- ``immediate generalisation``: it generalises otherwise (delay at or below that margin, or
  validation accuracy crossed before training accuracy did, or training never crossed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from grokbasin.theory.closed_form import sgd_temperature

NO_GEN, GROKKING, IMMEDIATE = "no generalisation", "grokking", "immediate generalisation"
ArrayLike = Sequence[float] | np.ndarray


def _arrays(epochs: ArrayLike, *curves: ArrayLike) -> tuple[np.ndarray, ...]:
    """Float arrays sorted by epoch, validated to have equal, non-zero length."""
    e = np.asarray(epochs, dtype=float)
    cs = [np.asarray(c, dtype=float) for c in curves]
    if e.ndim != 1 or e.size == 0 or any(c.shape != e.shape for c in cs):
        raise ValueError("curves must be non-empty 1-D arrays of the same length as epochs")
    order = np.argsort(e, kind="stable")
    return (e[order], *(c[order] for c in cs))


def first_crossing(epochs: ArrayLike, values: ArrayLike, threshold: float) -> int | None:
    """First epoch whose value is ≥ threshold, or None if it never is."""
    e, v = _arrays(epochs, values)
    hit = np.nonzero(v >= threshold)[0]
    return None if hit.size == 0 else int(e[hit[0]])


def _interval_weights(e: np.ndarray) -> np.ndarray:
    """Epochs each checkpoint stands for: (e_{i−1}, e_i], the first one from epoch 0."""
    return np.diff(np.concatenate([[min(0.0, e[0])], e]))


def gsm(
    epochs: ArrayLike,
    train_acc: ArrayLike,
    val_acc: ArrayLike,
    threshold: float = 0.95,
    horizon: float | None = None,
) -> float:
    """Paper A's GSM = 1{a_V(T) ≥ 0.95} · (1/T) · Σ_{x=1..T} |a_T(x) − a_V(x)|.

    The per-epoch sum is taken over checkpoints, each weighted by the epochs since the previous
    one (a step function), so it equals the paper's per-epoch average for every-epoch curves and
    does not depend on the checkpoint spacing otherwise. T is the last epoch, or ``horizon``
    when it is later: the curves are then held at their last values up to it (a run stopped
    early stays where it stopped), so runs of different lengths share one T. GSM scales as 1/T,
    so values are only comparable at the same T.
    """
    e, at, av = _arrays(epochs, train_acc, val_acc)
    if horizon is not None and horizon > e[-1]:
        e, at, av = np.append(e, horizon), np.append(at, at[-1]), np.append(av, av[-1])
    if av[-1] < threshold:
        return 0.0
    w = _interval_weights(e)
    total = w.sum()
    return float((w * np.abs(at - av)).sum() / total) if total > 0 else float(abs(at[-1] - av[-1]))


def gsm_signed(
    epochs: ArrayLike, train_acc: ArrayLike, val_acc: ArrayLike, threshold: float = 0.9
) -> float:
    """The authors' code variant: signed mean of a_T − a_V, gated on final val acc ≥ 0.9.

    Same epoch weighting as :func:`gsm`; it can be negative when validation leads training.
    """
    e, at, av = _arrays(epochs, train_acc, val_acc)
    if av[-1] < threshold:
        return 0.0
    w = _interval_weights(e)
    total = w.sum()
    return float((w * (at - av)).sum() / total) if total > 0 else float(at[-1] - av[-1])


def checkpoint_interval(epochs: ArrayLike) -> float:
    """Median spacing between checkpoints (0 for a single checkpoint)."""
    (e,) = _arrays(epochs)
    return float(np.median(np.diff(e))) if e.size > 1 else 0.0


def regime(
    t_mem: int | None,
    t_gen: int | None,
    interval: float,
    min_delay_checkpoints: float = 2.0,
    rel_delay: float = 1.0,
) -> str:
    """Classify a run by the rule in the module docstring."""
    if t_gen is None:
        return NO_GEN
    if t_mem is None or t_gen <= t_mem:
        return IMMEDIATE
    margin = max(min_delay_checkpoints * interval, rel_delay * t_mem)
    return GROKKING if t_gen - t_mem > margin else IMMEDIATE


def curve_metrics(
    epochs: ArrayLike,
    train_acc: ArrayLike,
    val_acc: ArrayLike,
    mem_threshold: float = 0.99,
    gen_threshold: float = 0.95,
    signed_threshold: float = 0.9,
    min_delay_checkpoints: float = 2.0,
    rel_delay: float = 1.0,
) -> dict[str, Any]:
    """t_mem, t_gen, delay, GSM (paper and signed), regime and final accuracies of one replica."""
    e, at, av = _arrays(epochs, train_acc, val_acc)
    t_mem = first_crossing(e, at, mem_threshold)
    t_gen = first_crossing(e, av, gen_threshold)
    return {
        "t_mem": t_mem,
        "t_gen": t_gen,
        "delay": None if t_mem is None or t_gen is None else t_gen - t_mem,
        "gsm": gsm(e, at, av, gen_threshold),
        "gsm_signed": gsm_signed(e, at, av, signed_threshold),
        "regime": regime(t_mem, t_gen, checkpoint_interval(e), min_delay_checkpoints, rel_delay),
        "final_epoch": int(e[-1]),
        "final_train_acc": float(at[-1]),
        "final_val_acc": float(av[-1]),
    }


def _rows(metrics: pa.Table | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return metrics.to_pylist() if isinstance(metrics, pa.Table) else list(metrics)


def grokking_metrics(
    metrics: pa.Table | Sequence[dict[str, Any]],
    n_train: int | None = None,
    batch_size: int | None = None,
    **thresholds: Any,
) -> list[dict[str, Any]]:
    """Every metric per replica of a metrics table (columns of metrics.parquet), replica order.

    Adds the replica's seed, lr and weight_decay when present, final train/val loss, and the SGD
    effective temperature T = η(n − B)/(2nB) (App. C) when ``n_train`` and ``batch_size`` are
    given (batch 0 = full batch). ``thresholds`` go to :func:`curve_metrics`.
    """
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in _rows(metrics):
        groups[int(row.get("replica", 0))].append(row)
    out = []
    for rep in sorted(groups):
        rows = sorted(groups[rep], key=lambda r: r["epoch"])
        col = {k: [r[k] for r in rows] for k in ("epoch", "train_acc", "val_acc")}
        res: dict[str, Any] = {"replica": rep}
        res.update({k: rows[0][k] for k in ("seed", "lr", "weight_decay") if k in rows[0]})
        res.update(curve_metrics(col["epoch"], col["train_acc"], col["val_acc"], **thresholds))
        res.update(
            {f"final_{k}": float(rows[-1][k]) for k in ("train_loss", "val_loss") if k in rows[-1]}
        )
        if n_train is not None and batch_size is not None and "lr" in res:
            res["temperature"] = sgd_temperature(float(res["lr"]), n_train, batch_size)
        out.append(res)
    return out

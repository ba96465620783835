"""Which calibration cell to recommend, and why (``llc calibrate``; rules in its docstring).

A cell *passes* when it is healthy at every checkpoint (none of :data:`DISQUALIFYING`), reaches
the MALA target and keeps the checkpoints' consensus order (Kendall τ_b ≥ ``order_min``, swaps
within :data:`TIE_Z` standard errors tied); :func:`recommend` picks among passing cells and
:func:`explain` says why. Pure functions over the calibration's per-cell rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DISQUALIFYING = ("nonfinite", "explosion", "negative", "rhat", "nonstationary")
ORDER_MIN = 0.5  # Kendall τ_b ≥ 0.5 ⟺ at most a quarter of the (untied) checkpoint pairs swapped
TIE_Z = 2.0  # checkpoints whose λ̂ differ by less than 2 combined standard errors count as tied


def kendall_tau(x: np.ndarray, ref: np.ndarray, se: np.ndarray | None = None) -> np.ndarray:
    """Kendall's τ_b of each row of ``x`` [N, K] with ``ref`` [K], all pairs at once; NaN for a
    row with a non-finite value or without an untied pair. With ``se`` [N, K] (standard errors),
    a pair closer than ``TIE_Z``·√(se_i² + se_j²) is a tie: a swap within noise is no flip."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    ref = np.asarray(ref, dtype=float)
    i, j = np.triu_indices(ref.size, 1)
    dx = x[:, j] - x[:, i]
    sx, sr = np.sign(dx), np.sign(ref[j] - ref[i])
    if se is not None:
        se = np.nan_to_num(np.atleast_2d(np.asarray(se, dtype=float)))
        sx = np.where(np.abs(dx) <= TIE_Z * np.hypot(se[:, i], se[:, j]), 0.0, sx)
    den = np.sqrt((sx != 0).sum(-1) * float((sr != 0).sum()))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (sx * sr).sum(-1) / den
    tau[~np.isfinite(x).all(-1) | (den == 0)] = np.nan
    return tau


def _se(r: dict[str, Any]) -> float:
    """Standard error of a row's λ̂ over its finite chains (0 with fewer than two)."""
    v = np.asarray(r.get("llc_chains", []), dtype=float)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0


def consensus_order(llc: np.ndarray) -> np.ndarray:
    """Borda consensus of cells' per-checkpoint λ̂ [N, K]: each checkpoint's mean rank [K]."""
    ranks = np.argsort(np.argsort(np.asarray(llc, dtype=float), axis=-1), axis=-1)
    return ranks.mean(0)


CellKey = tuple[str, float, float, float]  # (sampler, ε, γ, nβ)


def cell_key(r: dict[str, Any]) -> CellKey:
    """A row's cell: sampler ('' when the axis is off), ε, γ, nβ."""
    return (r.get("sampler", ""), r["step_size"], r["gamma"], r["nbeta"])


def group_cells(rows: list[dict[str, Any]]) -> dict[CellKey, list[dict[str, Any]]]:
    """Rows grouped by cell, cells in table order, each cell's rows by checkpoint (epoch)."""
    out: dict[CellKey, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(cell_key(r), []).append(r)
    return {k: sorted(v, key=lambda r: r.get("epoch", 0)) for k, v in out.items()}


def order_check(rows: list[dict[str, Any]]) -> None:
    """Set ``order_tau`` on every row: τ_b of its cell's per-checkpoint λ̂ with the consensus
    order of the cells (same nβ) healthy at every checkpoint, swaps within the cell's noise as
    ties; NaN when no cell is healthy or all the cell's checkpoints are within noise."""
    cells = group_cells(rows)
    for nb in dict.fromkeys(k[3] for k in cells):
        mine = [c for k, c in cells.items() if k[3] == nb]
        llc = np.array([[r["llc_mean"] for r in c] for c in mine])
        ok = np.array([all(r["healthy"] for r in c) for c in mine]) & np.isfinite(llc).all(-1)
        if ok.any():
            se = np.array([[_se(r) for r in c] for c in mine])
            tau = kendall_tau(llc, consensus_order(llc[ok]), se)
        else:
            tau = np.full(len(mine), np.nan)
        for c, t in zip(mine, tau, strict=True):
            for r in c:
                r["order_tau"] = float(t)


def _accept(cell: list[dict[str, Any]]) -> float:
    """The cell's least MALA acceptance over its checkpoints (NaN when not recorded)."""
    acc = [r.get("mala_accept", math.nan) for r in cell]
    return float(min(acc)) if all(np.isfinite(acc)) else math.nan


def failures(
    cell: list[dict[str, Any]], mala_target: float | None = None, order_min: float = ORDER_MIN
) -> list[tuple[str, str]]:
    """The criteria a cell (its rows over checkpoints) fails, as (criterion, detail); [] = it
    passes. Criteria: 'unhealthy', 'below the MALA target', 'flipped the checkpoint order'."""
    out = []
    if not all(r["healthy"] for r in cell):
        bad = sorted({f for r in cell for f in r["flags"] if f in DISQUALIFYING})
        out.append(("unhealthy", ",".join(bad) or "no finite chain"))
    acc = _accept(cell)
    if mala_target is not None and np.isfinite(acc) and acc < mala_target:
        out.append(("below the MALA target", f"acceptance {acc:.2f} < {mala_target:g}"))
    tau = cell[0].get("order_tau", math.nan)
    if np.isfinite(tau) and tau < order_min:
        out.append(("flipped the checkpoint order", f"τ {tau:.2f} < {order_min:g}"))
    return out


def _gap(cell: list[dict[str, Any]]) -> float:
    """Mean |relative gap| of λ̂ to λ_Lap over the cell's checkpoints (NaN without λ_Lap)."""
    gaps = [abs(r["laplace_gap"]) for r in cell if np.isfinite(r["laplace_gap"])]
    return float(np.mean(gaps)) if gaps else math.nan


def _spread(cell: list[dict[str, Any]]) -> float:
    """Mean relative spread std/|mean| of λ̂ across chains over the cell's checkpoints."""
    v = [r["llc_std"] / abs(r["llc_mean"]) for r in cell if r["llc_mean"]]
    v = [x for x in v if np.isfinite(x)]
    return float(np.mean(v)) if v else math.inf


def _candidates(
    cells: dict[CellKey, list[dict[str, Any]]], mala_target: float | None, order_min: float
) -> list[CellKey]:
    """For each (sampler, γ) the passing cell with the largest ε."""
    best: dict[tuple[str, float], CellKey] = {}
    for k, c in cells.items():
        if failures(c, mala_target, order_min):
            continue
        cur = best.get((k[0], k[2]))
        if cur is None or k[1] > cur[1]:
            best[(k[0], k[2])] = k
    return list(best.values())


def _winner(cells: dict[CellKey, list[dict[str, Any]]], cands: list[CellKey]) -> CellKey:
    """The recommended candidate: closest to λ_Lap, else largest ε per sampler then stability."""
    with_lap = [k for k in cands if np.isfinite(_gap(cells[k]))]
    if with_lap:
        return min(with_lap, key=lambda k: (_gap(cells[k]), -k[1]))
    per_sampler: dict[str, CellKey] = {}
    for k in cands:
        cur = per_sampler.get(k[0])
        if cur is None or (k[1], -k[2]) > (cur[1], -cur[2]):
            per_sampler[k[0]] = k
    return min(per_sampler.values(), key=lambda k: (_spread(cells[k]), -k[1]))


def recommend(
    rows: list[dict[str, Any]], mala_target: float | None = None, order_min: float = ORDER_MIN
) -> dict[float, dict[str, Any] | None]:
    """The recommended cell per nβ (its row at the last checkpoint; see the module docstring),
    None where no cell passes."""
    out: dict[float, dict[str, Any] | None] = {}
    cells = group_cells(rows)
    for nb in dict.fromkeys(r["nbeta"] for r in rows):
        mine = {k: c for k, c in cells.items() if k[3] == nb}
        cands = _candidates(mine, mala_target, order_min)
        out[nb] = mine[_winner(mine, cands)][-1] if cands else None
    return out


def _name(k: CellKey) -> str:
    """A cell's short name: ``[sampler ]ε=…, γ=…``."""
    return f"{k[0] + ' ' if k[0] else ''}ε={k[1]:g}, γ={k[2]:g}"


def _passed(cell: list[dict[str, Any]], mala_target: float | None, order_min: float) -> str:
    """The criteria a passing cell met, with its numbers."""
    from grokbasin.llc.diagnostics import Thresholds

    th = Thresholds()
    rhat = max((r["rhat"] for r in cell), default=math.nan)
    ess = min((r["ess"] for r in cell), default=math.nan)
    parts = [f"healthy chains at {len(cell)}/{len(cell)} checkpoint(s)"]
    if np.isfinite(rhat):
        parts.append(f"R-hat {rhat:.3f} ≤ {th.rhat:g}")
    if np.isfinite(ess):
        parts.append(
            f"ESS {ess:.0f} ≥ {th.min_ess:g}"
            if ess >= th.min_ess
            else f"ESS {ess:.0f} < {th.min_ess:g} (warning only: lengthen chains)"
        )
    if mala_target is not None:
        acc = _accept(cell)
        parts.append(
            f"MALA acceptance {acc:.2f} ≥ target {mala_target:g}"
            if np.isfinite(acc)
            else "MALA acceptance n/a for this sampler"
        )
    tau = cell[0].get("order_tau", math.nan)
    if np.isfinite(tau):
        parts.append(f"checkpoint order kept (τ {tau:.2f} ≥ {order_min:g})")
    spread = _spread(cell)
    if np.isfinite(spread):
        parts.append(f"chain spread {100 * spread:.0f}%")
    return ", ".join(parts)


def explain(
    rows: list[dict[str, Any]], mala_target: float | None = None, order_min: float = ORDER_MIN
) -> dict[float, str]:
    """Per nβ, one line: the criteria the recommended cell passed, why it beat the other passing
    cells, and what the failing cells failed (counts per criterion, larger ε at its γ named)."""
    out = {}
    cells = group_cells(rows)
    for nb in dict.fromkeys(r["nbeta"] for r in rows):
        mine = {k: c for k, c in cells.items() if k[3] == nb}
        failed = {k: f for k, c in mine.items() if (f := failures(c, mala_target, order_min))}
        counts: dict[str, int] = {}
        for f in failed.values():
            for crit, _ in f:
                counts[crit] = counts.get(crit, 0) + 1
        excluded = "; ".join(f"{n} cell(s) {c}" for c, n in counts.items())
        cands = _candidates(mine, mala_target, order_min)
        if not cands:
            out[nb] = f"no cell passed: {excluded or 'no cells'}"
            continue
        win = _winner(mine, cands)
        gap = _gap(mine[win])
        if np.isfinite(gap):
            rule = f"closest to λ_Lap (|gap| {100 * gap:.0f}%)"
        elif len({k[0] for k in cands}) > 1:
            rule = "the largest passing ε of the most stable sampler"
        else:
            rule = "the largest passing ε"
        lost = []
        for k in cands:
            if k == win:
                continue
            if np.isfinite(gap) and np.isfinite(_gap(mine[k])):
                why = f"|gap| {100 * _gap(mine[k]):.0f}%"
            elif k[0] != win[0]:
                why = f"chain spread {100 * _spread(mine[k]):.0f}%"
            else:
                why = "smaller ε" if k[1] < win[1] else "larger γ"
            lost.append(f"{_name(k)} ({why})")
        bigger = [
            f"{_name(k)}: " + "; ".join(f"{c} ({d})" for c, d in failed[k])
            for k in failed
            if k[0] == win[0] and k[2] == win[2] and k[1] > win[1]
        ]
        text = f"{_name(win)} won: passed {_passed(mine[win], mala_target, order_min)}; {rule}."
        if bigger:
            text += f" Larger ε at this γ failed: {' | '.join(bigger[:2])}."
        if lost:
            text += f" Passing runners-up: {', '.join(lost[:3])}."
        if excluded:
            text += f" Failed: {excluded}."
        out[nb] = text
    return out

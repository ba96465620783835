"""Which LLC rows count: one selection rule for one run or many, over DuckDB (SPEC §5).

Every reader of ``llc.parquet`` (run report, experiments, the sweep engine's "already estimated?")
goes through :func:`llc_rows`, so they agree on what an estimate is:

- **sampler**: rows whose ``sampler_hash`` equals the wanted one (None: the run's newest hash, the
  hash of its last unrestricted row, else of its last row); a weight restriction's rows have
  their own hash (``LLCConfig.restriction_hash``), found by :func:`restriction_hashes`;
- **temperature**: rows whose nβ matches the wanted one within relative :data:`NBETA_RTOL` (a
  temperature sweep stores extra nβ values under the same hash); ``"modal"`` picks the nβ with the
  most rows (the main estimate), ``"any"`` keeps every nβ; a row without nβ (older files) matches;
- **checkpoints**: the epochs named by ``llc.checkpoints`` ('all', 'last', 'E1,E2'), parsed by
  :func:`checkpoint_epochs` against the run's checkpoint files (None: every epoch);
- **replica**: one replica of a multi-replica run, or all.

The files are read through DuckDB views (``store.db.llc_connection``), one query for all runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from grokbasin.errors import ConfigError, CorruptFileError

NBETA_RTOL = 1e-6
"""Relative tolerance for matching a row's nβ to a wanted nβ (float32 round trips pass)."""

NBeta = float | Literal["any", "modal"]


def checkpoint_epochs(have: Sequence[int], spec: str, *, strict: bool = False) -> list[int]:
    """The epochs of ``have`` that ``spec`` ('all', 'last' or 'E1,E2') names, sorted.

    strict: a named epoch missing from ``have`` is a ConfigError (the estimator's rule: asking for
    a checkpoint that does not exist is a mistake); otherwise it is dropped (a reader's rule).
    """
    have = sorted(int(e) for e in have)
    s = spec.strip()
    if s == "all":
        return have
    if s == "last":
        return have[-1:]
    try:
        want = sorted({int(x) for x in s.replace(",", " ").split()})
    except ValueError:
        raise ConfigError(
            f"llc.checkpoints: {spec!r} is not 'all', 'last' or comma-separated epochs"
        ) from None
    missing = [e for e in want if e not in set(have)]
    if strict and missing:
        raise ConfigError(f"llc.checkpoints: no checkpoint for epochs {missing}; have {have}")
    return [e for e in want if e in set(have)]


def nbeta_matches(value: float | None, want: float) -> bool:
    """The one nβ comparison: relative tolerance :data:`NBETA_RTOL`; a missing nβ matches."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return math.isclose(float(value), float(want), rel_tol=NBETA_RTOL)


@dataclass(frozen=True)
class Want:
    """Which LLC rows of one run directory to select (see the module docstring for the rule)."""

    run: Path
    sampler_hash: str | None = None
    nbeta: NBeta = "modal"
    checkpoints: str | None = None
    replica: int | None = None

    @classmethod
    def of(cls, cfg: Any, root: str | Path, checkpoints: str | None = "config") -> Want:
        """The rows a RunConfig's sampler produced at its own nβ (checkpoints: its own spec)."""
        return cls(
            Path(root) / cfg.run_hash(),
            cfg.llc.sampler_hash(),
            cfg.llc.resolve_nbeta(cfg.task.n_train),
            cfg.llc.checkpoints if checkpoints == "config" else checkpoints,
        )


def llc_rows(wants: Sequence[Want]) -> list[list[dict]]:
    """The selected llc.parquet rows of each wanted run, in file order (one list per Want)."""
    from grokbasin.store.db import llc_connection
    from grokbasin.store.rundir import RunDir

    runs = {w.run.name: RunDir(w.run) for w in wants}
    files = [r.llc for r in runs.values() if r.llc.exists()]
    if not files:
        return [[] for _ in wants]
    con = llc_connection(files)
    try:
        hashes = sorted({w.sampler_hash for w in wants if w.sampler_hash is not None})
        names = sorted(runs)
        where = "run IN (SELECT unnest(?))"
        params: list[Any] = [names]
        if hashes and all(w.sampler_hash is not None for w in wants):
            where += " AND sampler_hash IN (SELECT unnest(?))"
            params.append(hashes)
        cur = con.execute(f"SELECT * FROM llc WHERE {where} ORDER BY run, file_row", params)
        cols = [d[0] for d in cur.description or []]
        found = [dict(zip(cols, t, strict=True)) for t in cur.fetchall()]
    finally:
        con.close()
    by_run: dict[str, list[dict]] = {}
    for r in found:
        by_run.setdefault(r["run"], []).append(r)
    out = []
    for w in wants:
        epochs = None
        if w.checkpoints is not None:
            epochs = set(checkpoint_epochs(runs[w.run.name].checkpoint_epochs(), w.checkpoints))
        out.append(_select(by_run.get(w.run.name, []), w, epochs))
    return out


def _select(rows: list[dict], w: Want, epochs: set[int] | None) -> list[dict]:
    """The rule of the module docstring, applied to one run's rows in file order."""
    rows = [r for r in rows if w.replica is None or r.get("replica", 0) == w.replica]
    if not rows:
        return []
    whole = [r for r in rows if not r.get("restriction")] or rows
    h = w.sampler_hash if w.sampler_hash is not None else whole[-1].get("sampler_hash")
    rows = [r for r in rows if r.get("sampler_hash") == h]
    nb = select_nbeta(rows, w.nbeta)
    if nb != "any":
        rows = [r for r in rows if nbeta_matches(r.get("nbeta"), float(nb))]
    if epochs is not None:
        rows = [r for r in rows if int(r["epoch"]) in epochs]
    return rows


def restriction_hashes(run: Path, sampler: Any) -> dict[str, tuple[str, list[str]]]:
    """Restriction name -> (row hash, patterns) of the restricted estimates stored in ``run``
    for the sampler settings ``sampler`` (an LLCConfig): each restricted row records its
    patterns, so the hash they would have under these settings tells current rows from stale
    ones."""
    from grokbasin.store.db import llc_connection
    from grokbasin.store.rundir import RunDir

    f = RunDir(run).llc
    if not f.exists():
        return {}
    con = llc_connection([f])
    try:
        cols = {d[0] for d in con.execute("SELECT * FROM llc LIMIT 0").description or []}
        if "restriction" not in cols:
            return {}
        found = con.execute(
            "SELECT DISTINCT restriction, sampler_hash, sampler_config FROM llc "
            "WHERE restriction IS NOT NULL"
        ).fetchall()
    finally:
        con.close()
    base, out = sampler.sampler_hash(), {}
    for name, h, scfg in found:
        try:
            pats = json.loads(scfg)["restriction"]["patterns"]
        except (TypeError, KeyError, ValueError):
            continue
        probe = sampler.model_copy(update={"restrict": {name: pats}})
        if probe.restriction_hash(name) == h and probe.sampler_hash() == base:
            out[name] = (h, list(pats))
    return dict(sorted(out.items()))


def select_nbeta(rows: Sequence[dict], nbeta: NBeta) -> float | Literal["any"]:
    """The nβ that ``nbeta`` names among ``rows``: "modal" is the one with the most rows (the
    main estimate; "any" when no row has an nβ); a number or "any" is returned as it is."""
    if nbeta != "modal":
        return nbeta
    counts: dict[float, int] = {}
    for r in rows:
        if r.get("nbeta") is not None:
            counts[r["nbeta"]] = counts.get(r["nbeta"], 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else "any"


def by_epoch(rows: Sequence[dict]) -> dict[int, list[float]]:
    """Per-chain λ̂ of selected rows, by checkpoint epoch (sorted)."""
    out: dict[int, list[float]] = {}
    for r in rows:
        out.setdefault(int(r["epoch"]), []).append(
            math.nan if r["llc"] is None else float(r["llc"])
        )
    return dict(sorted(out.items()))


def llc_arrays(rows: Sequence[dict]) -> dict[str, Any] | None:
    """Selected rows as plain arrays: epoch [E], llc [E, C] ((replica, chain) columns), flagged
    [E], llc_laplace [E] where stored, and the sampler's nβ; None without rows."""
    if not rows:
        return None
    chain_of = [(r.get("replica", 0), r.get("chain", 0)) for r in rows]
    epochs = sorted({r["epoch"] for r in rows})
    chains = sorted(set(chain_of))
    e_at, c_at = {e: k for k, e in enumerate(epochs)}, {c: k for k, c in enumerate(chains)}
    vals = np.full((len(epochs), len(chains)), np.nan)
    flagged = np.zeros(len(epochs), dtype=bool)
    lap_sum, lap_n = np.zeros(len(epochs)), np.zeros(len(epochs))
    lap_key = next((k for k in ("llc_laplace", "laplace") if k in rows[0]), None)
    for r, c in zip(rows, chain_of, strict=True):
        e = e_at[r["epoch"]]
        vals[e, c_at[c]] = r["llc"] if r["llc"] is not None else np.nan
        if r.get("flags"):
            flagged[e] = True
        lap = r.get(lap_key) if lap_key else None
        if lap is not None and math.isfinite(lap):
            lap_sum[e] += lap
            lap_n[e] += 1
    out: dict[str, Any] = {
        "epoch": np.asarray(epochs, dtype=float),
        "llc": vals,
        "flagged": flagged,
    }
    if lap_n.any():
        out["llc_laplace"] = np.where(lap_n > 0, lap_sum / np.maximum(lap_n, 1), np.nan)
    if rows[0].get("nbeta") is not None:
        out["sampler"] = {"nbeta": rows[0]["nbeta"]}
    return out


def metrics_arrays(
    rows: Sequence[dict], replica: int | Literal["all"] | None = None
) -> dict[str, np.ndarray]:
    """Metrics rows of one replica (None: the lowest; "all": mean over replicas) as arrays by
    epoch: epoch, train_loss, val_loss, train_acc, val_acc."""
    reps = sorted({r.get("replica", 0) for r in rows}) or [0]
    rep = reps[0] if replica is None else replica
    if rep != "all" and rep not in reps:
        raise CorruptFileError(f"replica {rep} not in metrics (have {reps})")
    keep = [r for r in rows if rep == "all" or r.get("replica", 0) == rep]
    epochs = sorted({r["epoch"] for r in keep})
    at = {e: k for k, e in enumerate(epochs)}
    idx = [at[r["epoch"]] for r in keep]
    count = np.zeros(len(epochs))
    np.add.at(count, idx, 1.0)
    out: dict[str, np.ndarray] = {"epoch": np.asarray(epochs, dtype=float)}
    for k in ("train_loss", "val_loss", "train_acc", "val_acc"):
        total = np.zeros(len(epochs))
        np.add.at(total, idx, [np.nan if r[k] is None else r[k] for r in keep])
        out[k] = total / np.maximum(count, 1)
    return out


__all__ = [
    "NBETA_RTOL",
    "Want",
    "by_epoch",
    "checkpoint_epochs",
    "llc_arrays",
    "llc_rows",
    "metrics_arrays",
    "nbeta_matches",
    "select_nbeta",
]

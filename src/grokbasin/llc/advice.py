"""Health flags grouped by kind, each with the next command to try (CLI output and reports).

One line per flag kind instead of one per flagged checkpoint: how many checkpoints carry it,
which epochs, what it means and a `grokbasin` command with the setting it would change,
computed from the sampler settings the rows were made with (their ``sampler_config``).
Pure: rows in, lines out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grokbasin.config import LLCConfig
from grokbasin.llc.diagnostics import Thresholds

DEFAULTS: dict[str, Any] = {
    k: LLCConfig.model_fields[k].default for k in ("chains", "draws", "burnin", "step_size")
}
"""Settings assumed when rows carry no sampler_config: LLCConfig's defaults."""

ORDER = ("nonfinite", "explosion", "negative", "nonstationary", "rhat", "low_ess")
"""Most to least serious: a diverged chain makes the other statistics meaningless."""


@dataclass(frozen=True)
class FlagGroup:
    """One flag kind: the flagged (replica, epoch) checkpoints out of all, and the advice."""

    flag: str
    checkpoints: tuple[tuple[int, int], ...]
    total: int
    line: str


def row_flags(row: Mapping[str, Any]) -> list[str]:
    """A row's flags from a list or the comma-separated parquet string."""
    flags = row.get("flags") or []
    if isinstance(flags, str):
        flags = [f for f in re.split(r"[,;\s]+", flags) if f]
    return [str(f) for f in flags]


def settings_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sampler settings of the rows (the last row's sampler_config over the defaults)."""
    for r in reversed(rows):
        text = r.get("sampler_config")
        if text:
            try:
                return {**DEFAULTS, **json.loads(text)}
            except (TypeError, ValueError):
                break
    return dict(DEFAULTS)


def _num(v: float) -> str:
    """A flag value as typed on the command line: 1e-05, 800, 0.5."""
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}"


def _advice(
    run: str, s: Mapping[str, Any], th: Thresholds, ess_factor: int = 4
) -> dict[str, tuple[str, str]]:
    """flag -> (what it means, what to run next) at sampler settings ``s``; ESS grows about in
    proportion to the draws, so low ESS asks for ``ess_factor`` times as many."""
    est = f"grokbasin llc estimate {run}"
    cal = f"`grokbasin llc calibrate {run}`"
    eps, chains, draws = float(s["step_size"]), int(s["chains"]), int(s["draws"])
    burnin = int(s["burnin"])
    smaller = f"`{est} --step-size {_num(eps / 10)}`"
    return {
        "nonfinite": (
            "chains diverged (a non-finite loss)",
            f"the step size {_num(eps)} is too large: try {smaller}, or pick ε and γ with {cal}",
        ),
        "explosion": (
            f"chains exploded (a draw > {_num(th.explosion_k)} robust σ above the median)",
            f"the step size {_num(eps)} is too large: try {smaller}, or pick ε and γ with {cal}",
        ),
        "negative": (
            "λ̂ < 0 (the chain found loss below L_n(w*))",
            "w* is not a local minimum at this resolution or the step is too large: try "
            f"`{est} --gamma {_num(float(s.get('gamma', 5.0)) * 10)}` (stronger localisation) "
            f"or {cal}",
        ),
        "nonstationary": (
            "chains not stationary (a trend over the second half of the draws)",
            f"burn-in {burnin} is too short for step size {_num(eps)}: try "
            f"`{est} --burnin {max(4 * burnin, 100)}`, or pick ε and γ with {cal}",
        ),
        "rhat": (
            f"R-hat > {_num(th.rhat)} (chains disagree)",
            f"try `{est} --chains {2 * chains} --draws {2 * draws}`",
        ),
        "low_ess": (
            f"ESS < {_num(th.min_ess)} (too few effective draws)",
            f"try `{est} --draws {_num(ess_factor * draws)}`, or a larger step size (see {cal})",
        ),
    }


def ess_factor(rows: Sequence[Mapping[str, Any]], th: Thresholds, most: int = 10) -> int:
    """How many times the draws would lift the median ESS of the low-ESS rows to the threshold
    (ESS ∝ draws), between 2 and ``most``; 4 when no row states its ESS."""
    ess = [float(r["ess"]) for r in rows if "low_ess" in row_flags(r) and r.get("ess") is not None]
    ess = [e for e in ess if math.isfinite(e) and e > 0]
    if not ess:
        return 4
    need = th.min_ess / float(sorted(ess)[len(ess) // 2])
    return int(min(max(math.ceil(need), 2), most))


def _epochs(ck: Sequence[tuple[int, int]], replicas: int, limit: int = 6) -> str:
    """'epochs 100, 200, … (12)' with replicas named when the run has several."""
    names = [f"{e}" if replicas == 1 else f"{e} (replica {r})" for r, e in ck]
    shown = ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")
    return f"epoch{'s' * (len(names) != 1)} {shown}"


def group_flags(
    rows: Sequence[Mapping[str, Any]],
    run: str = "RUN_DIR",
    thresholds: Thresholds | None = None,
    settings: Mapping[str, Any] | None = None,
) -> list[FlagGroup]:
    """Flags of llc rows grouped by kind (most serious first), each with advice naming the next
    command for ``run`` and the setting it would try. A checkpoint is one (replica, epoch)."""
    th = thresholds or Thresholds()
    s = {**DEFAULTS, **(settings or settings_of(rows))}
    every = {
        (int(r.get("replica") or 0), int(r["epoch"])) for r in rows if r.get("epoch") is not None
    }
    replicas = len({r for r, _ in every}) or 1
    by_flag: dict[str, set[tuple[int, int]]] = {}
    for r in rows:
        for f in row_flags(r):
            by_flag.setdefault(f, set()).add((int(r.get("replica") or 0), int(r["epoch"])))
    advice = _advice(run, s, th, ess_factor(rows, th))
    out = []
    for f in sorted(by_flag, key=lambda f: (_rank(f), f)):
        ck = tuple(sorted(by_flag[f], key=lambda rep_epoch: (rep_epoch[1], rep_epoch[0])))
        what, todo = advice.get(f, (f"flag {f!r}", f"see `grokbasin llc calibrate {run}`"))
        line = f"{what} at {len(ck)} of {len(every)} checkpoints ({_epochs(ck, replicas)}): {todo}"
        out.append(FlagGroup(f, ck, len(every), line))
    return out


def advice_lines(
    rows: Sequence[Mapping[str, Any]],
    run: str = "RUN_DIR",
    thresholds: Thresholds | None = None,
) -> list[str]:
    """One warning line per flag kind with its advice (see :func:`group_flags`)."""
    return [g.line for g in group_flags(rows, run, thresholds)]


def _rank(flag: str) -> int:
    """Position of a flag in :data:`ORDER` (unknown flags last)."""
    return ORDER.index(flag) if flag in ORDER else len(ORDER)


def severity(flags: Sequence[str]) -> float:
    """Sort key for checkpoints to show first: the most serious flag, then how many (inf: none)."""
    if not flags:
        return math.inf
    return min(_rank(f) for f in flags) - 0.01 * len(flags)


__all__ = [
    "FlagGroup",
    "advice_lines",
    "ess_factor",
    "group_flags",
    "row_flags",
    "settings_of",
    "severity",
]

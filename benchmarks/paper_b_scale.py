"""Estimate paper-B wall times at paper scale by timing two short slices of each grid.

Each slice runs the paper grid through the run engine with every step count (training steps and
SGLD burn-in + draws) scaled by a fraction f, then by 2f, on fresh roots. Time is linear in f
(t = c0 + C·f), so the full run takes about t(f) + (t(2f) − t(f))·(1/f − 1). Times are CPU
seconds of all threads (training uses one, SGLD one per core), so on an idle 2-core machine the
wall time lies between CPU/2 and CPU. TMS keeps its 100
checkpoints (every = steps/100); grokking's sampling is timed separately on 336 centres (168 grokked
runs × checkpoints i, j as in the paper) with 3 chains.

    python benchmarks/paper_b_scale.py llc-polynomial 0.01
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time

from grokbasin.experiments.paper_b.common import runs_of
from grokbasin.experiments.paper_b.engine import run_all
from grokbasin.experiments.paper_b.grids import grid


def scaled(g: dict, f: float, name: str) -> dict:
    """The grid with training and sampler steps multiplied by f (at least 1)."""
    g = copy.deepcopy(g)
    s, t = g["base"]["llc"], g["base"].setdefault("train", {})
    total = s["burnin"] + s["draws"]
    s["draws"] = max(1, round(f * total))
    s["burnin"] = 0
    if t.get("steps"):
        t["steps"] = max(1, round(f * t["steps"]))
        if name == "arrhenius-tms":
            t["checkpoint_every"] = max(1, t["steps"] // 100)
    return g


def timed(g: dict) -> float:
    """CPU seconds of the process (all threads): robust to other users of a shared machine."""
    with tempfile.TemporaryDirectory() as root:
        t0 = time.process_time()
        run_all(runs_of(g), root)
        return time.process_time() - t0


def warm_up(name: str) -> None:
    """One tiny run first: imports, kernel compilation and allocator warm-up are not timed."""
    g = scaled(grid(name, "paper"), 1e-4, name)
    g["points"], g["seeds"] = (g.get("points") or [{}])[:1], [10**6]
    timed(g)


def estimate(name: str, f: float, part: str = "all") -> dict:
    """Estimated CPU seconds at paper scale; ``part`` 'sampling' times grokking's SGLD only."""
    warm_up(name)
    g = grid(name, "paper")
    if part == "sampling":
        return {"name": name} | _grokking_sampling()
    # grokking: this slice is training (no run groks in it); its sampling is part 'sampling'
    t1, t2 = timed(scaled(g, f, name)), timed(scaled(g, 2 * f, name))
    return {"name": name, "f": f, "t_f": t1, "t_2f": t2, "estimate_s": t1 + (t2 - t1) * (1 / f - 1)}


def _grokking_sampling() -> dict:
    """336 centres (168 grokked runs × i, j) × 3 chains, the paper's 500 SGLD steps."""
    h = grid("arrhenius-grokking", "paper")
    h["seeds"] = list(range(336))
    h["base"]["train"] |= {"steps": 1, "checkpoint_every": 1}
    h["base"]["llc"]["checkpoints"] = "last"
    s1, s2 = timed(scaled(h, 0.04, "x")), timed(scaled(h, 0.08, "x"))
    return {"sampling_s": s1 + (s2 - s1) * (1 / 0.04 - 1)}


if __name__ == "__main__":
    print(estimate(sys.argv[1], float(sys.argv[2]), *sys.argv[3:4]), flush=True)

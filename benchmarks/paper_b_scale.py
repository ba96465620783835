"""Estimate paper-B wall times at paper scale by timing two short slices of each grid.

Each slice runs the paper grid through the run engine with every step count (training steps and
SGLD burn-in + draws) scaled by a fraction f, then by 2f, on fresh roots. Time is linear in f
(t = c0 + C·f), so the full run takes about t(f) + (t(2f) − t(f))·(1/f − 1). TMS keeps its 100
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
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        run_all(runs_of(g), root)
        return time.perf_counter() - t0


def warm_up(name: str) -> None:
    """One tiny run first: imports, kernel compilation and allocator warm-up are not timed."""
    g = scaled(grid(name, "paper"), 1e-4, name)
    g["points"], g["seeds"] = (g.get("points") or [{}])[:1], [10**6]
    timed(g)


def estimate(name: str, f: float) -> dict:
    warm_up(name)
    g = grid(name, "paper")
    if name == "arrhenius-grokking":  # training slice; sampling below
        g["base"]["llc"]["checkpoints"] = "grokking"
    t1, t2 = timed(scaled(g, f, name)), timed(scaled(g, 2 * f, name))
    out = {"name": name, "f": f, "t_f": t1, "t_2f": t2, "estimate_s": t1 + (t2 - t1) * (1 / f - 1)}
    if name == "arrhenius-grokking":
        h = grid(name, "paper")
        h["seeds"] = list(range(336))
        h["base"]["train"] |= {"steps": 1, "checkpoint_every": 1}
        h["base"]["llc"]["checkpoints"] = "last"
        s1, s2 = timed(scaled(h, 0.04, "x")), timed(scaled(h, 0.08, "x"))
        samp = s1 + (s2 - s1) * (1 / 0.04 - 1)
        out |= {"sampling_s": samp, "estimate_s": out["estimate_s"] + samp}
    return out


if __name__ == "__main__":
    print(estimate(sys.argv[1], float(sys.argv[2])), flush=True)

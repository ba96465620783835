"""Candidate causes of the gap between paper A's Fig. 1/2 slopes and the reimplementations'.

Usage: python docs/paper-scale/gap_check.py ROOT llc-vs-p|llc-vs-width [VARIANT ...]

Re-samples the experiment's trained paper-scale runs (at the same solution checkpoints) with the
paper sampler changed in one setting at a time and prints each variant's slopes beside paper A's
(as read off its figures by atgugu/grokking-competing-basins) and atgugu's own. Variants:
- paper: the authors' current training.py sampler (ε 5e-4, γ 5, nβ 26.4, batch 128, 100 + 500);
- loader64: nβ = default_nbeta of a batch-64 loader (64/ln 64 = 15.4) and SGLD batches of 64,
  what the authors' code does for a run trained at batch size 64;
- burnin0: no burn-in (devinterp's default when num_burnin_steps is not passed), 500 draws.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grokbasin.experiments import common
from grokbasin.experiments.experiment import Context
from grokbasin.experiments.paper_a import llc_scaling

VARIANTS = {
    "paper": {},
    "loader64": {"nbeta": "auto", "batch_size": 64},
    "burnin0": {"burnin": 0},
}
# slopes per series value: paper A as read by atgugu (its README, "Paper slope"), atgugu's own
PAPER = {
    "llc-vs-p": {600: 51.06, 1000: 80.57, 1400: 108.61},
    "llc-vs-width": {53: 2.65, 61: 3.28, 71: 4.02},
}
ATGUGU = {
    "llc-vs-p": {600: 71.34, 1000: 113.06, 1400: 149.67},
    "llc-vs-width": {53: 3.42, 61: 4.22, 71: 5.22},
}


def main() -> None:
    root, name = Path(sys.argv[1]), sys.argv[2]
    names = sys.argv[3:] or list(VARIANTS)
    grid = dict((llc_scaling.LLC_VS_P if name == "llc-vs-p" else llc_scaling.LLC_VS_WIDTH)["paper"])
    base = dict(common.SAMPLER_PAPER, checkpoints="last")
    grid["samplers"] = {v: {**base, **VARIANTS[v]} for v in names}
    out = llc_scaling.compute(grid, Context(root, "paper", progress=True))
    series = "width" if name == "llc-vs-p" else "p"
    print(f"{name}: slope per {series} | paper A (read by atgugu) | atgugu | ratio to paper A")
    for f in out.summary:
        sv = f[series]
        pa, at = PAPER[name].get(sv), ATGUGU[name].get(sv)
        ratio = f["slope"] / pa if pa else float("nan")
        print(
            f"{f['sampler']:9s} {series}={sv}: slope {f['slope']:.2f} (R² {f['r2']:.4f}, "
            f"n {f['n_fit']}) | {pa} | {at} | {ratio:.3f}"
        )


if __name__ == "__main__":
    main()

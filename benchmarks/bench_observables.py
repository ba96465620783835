"""What observables and per-sample loss traces add to an LLC trajectory's wall time (issue 21
item 7), measured side by side in one process on the same batched sampler call.

Checkpoint-like centres (seeded inits) of a p = 23, K = 256 quadratic net, ``--checkpoints`` ×
4 chains in one call, 100 burn-in + 200 draws, batch 128, ε = 1e-4, γ = 5, nβ = B/ln B:
  plain       the trajectory's call (no observables)
  observables + mean losses on ``val`` (held-out pairs) and ``class=0`` at every draw
  per-sample  + per-sample traces of ``train`` and ``val`` (chains × draws × samples, float32)
The three run in turn ``--repeats`` times; the best of each is reported with its ratio to plain.
The sampling traces of the three are checked to be identical (observables are read-only).

    python benchmarks/bench_observables.py [--checkpoints 10] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from grokbasin import rng
from grokbasin.config import build_config
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.observables import trace_bytes
from grokbasin.llc.subsets import subset_rows
from grokbasin.llc.targets import from_modular
from grokbasin.models import build_model

CHAINS, BURNIN, DRAWS, BATCH = 4, 100, 200, 128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    cfg = build_config({}, {"task.p": 23, "model.width": 256, "train.seeds": [0]})
    G, dev = a.checkpoints, a.device
    params = build_model(cfg.model, 23, 23).init(rng.key(list(range(G))))
    p_rep = {k: v.repeat_interleave(CHAINS, 0).to(dev) for k, v in params.items()}

    def rows(name: str) -> torch.Tensor:
        return subset_rows(cfg, name).expand(G, -1).repeat_interleave(CHAINS, 0)

    train = rows("train")
    obs = {"val": rows("val"), "class=0": rows("class=0")}
    cases = {
        "plain": {},
        "observables": {"observables": obs},
        "per-sample": {"observables": {**obs, "train": train}, "per_sample": ["train", "val"]},
    }
    sizes = {k: v.shape[1] for k, v in cases["per-sample"]["observables"].items()}
    R = G * CHAINS
    print(
        f"p = 23, K = 256, {G} checkpoints × {CHAINS} chains = {R} replicas, "
        f"{BURNIN} + {DRAWS} steps, batch {BATCH}, n = {train.shape[1]}, "
        f"val m = {sizes['val']}, class=0 m = {sizes['class=0']}; per-sample traces "
        f"{trace_bytes(R, DRAWS, sizes, ['train', 'val']) / 2**20:.1f} MiB; device {dev}, "
        f"{torch.get_num_threads()} threads"
    )
    best: dict[str, float] = {}
    traces: dict[str, np.ndarray] = {}
    for _ in range(a.repeats):
        for name, kw in cases.items():
            target = from_modular(cfg, p_rep, train, BATCH, **kw)
            t0 = time.perf_counter()
            est = estimate_llc(
                target, groups=G, chains=CHAINS, step_size=1e-4, gamma=5.0,
                burnin=BURNIN, draws=DRAWS, diagnose=False,
            )  # fmt: skip
            if dev != "cpu":
                torch.cuda.synchronize()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            traces[name] = est.result.traces
    same = all(np.array_equal(traces["plain"], t) for t in traces.values())
    print(f"sampling traces identical across the three: {same}")
    for name, t in best.items():
        print(f"{name:12s} {t:7.2f} s   × {t / best['plain']:.2f} of plain")


if __name__ == "__main__":
    main()

"""Weight-restricted LLC cost: k restrictions batched in one call vs one call after another.

Trains one small built-in run (quadratic net), then estimates its LLC trajectory on fresh copies
of the run directory, side by side in one process (imports excluded, trained once):

  1. unrestricted only (``estimate_runs`` with no ``restrict``: today's call);
  2. batched: the unrestricted estimate and k restrictions in ONE call (``restrict`` with k
     entries: every restriction is more replicas of the same sampler call);
  3. sequential: the unrestricted call, then each restriction in its own call (the unrestricted
     rows are cached after the first, so each later call samples one restriction only).

The restrictions are W (the input weights) and V (the read-out); k > 2 repeats them under other
names (same cost per restriction). Prints wall times (best of ``--repeats``) and ratios and
writes WORKDIR/bench.json.

    python benchmarks/bench_restrict.py [--workdir /tmp/grokbasin-bench-restrict] [--p 23]
        [--width 128] [--checkpoints 11] [--chains 4] [--burnin 50] [--draws 100] [--k 2]
        [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from grokbasin.config import LLCConfig, build_config
from grokbasin.llc.trajectory import estimate_runs
from grokbasin.train.runner import train


def restrictions(k: int) -> dict[str, list[str]]:
    """k named restrictions cycling over W and V."""
    return {f"{'WV'[i % 2]}{i // 2 or ''}": ["WV"[i % 2]] for i in range(k)}


def timed(src: Path, dst: Path, cfgs: list[LLCConfig]) -> tuple[float, float]:
    """Wall and CPU seconds (all threads of this process) of ``estimate_runs`` calls, one per
    config, on a fresh copy of the run. CPU time is the fairer cost on a shared, loaded box."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    t, c = time.perf_counter(), time.process_time()
    for cfg in cfgs:
        estimate_runs([dst], cfg, progress=False)
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/grokbasin-bench-restrict"))
    ap.add_argument("--p", type=int, default=23)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--checkpoints", type=int, default=11)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--burnin", type=int, default=50)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timings each")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads = CPU shards (1: wall ≈ CPU time)"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = a.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    every = 20
    cfg = build_config(
        {},
        {
            "task.p": a.p,
            "model.width": a.width,
            "train.epochs": every * (a.checkpoints - 1),
            "train.checkpoint_every": every,
            "train.seeds": [0],
        },
    )
    run = train(cfg, work / "runs", progress=False).run.path
    llc = dict(chains=a.chains, burnin=a.burnin, draws=a.draws, batch_size=64)
    plain = LLCConfig(**llc)
    rs = restrictions(a.k)
    batched = [LLCConfig(**llc, restrict=rs)]
    sequential = [plain] + [LLCConfig(**llc, restrict={k: v}) for k, v in rs.items()]
    methods = {"unrestricted": [plain], "batched": batched, "sequential": sequential}
    wall: dict[str, float] = dict.fromkeys(methods, float("inf"))
    cpu = dict(wall)
    for _ in range(a.repeats):  # interleaved, best of each: load from other processes evens out
        for name, cfgs in methods.items():
            w, c = timed(run, work / name, cfgs)
            wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)
    for name in methods:
        print(f"{name:>12}: {wall[name]:7.2f} s wall, {cpu[name]:7.2f} s CPU", flush=True)
    out = {
        "settings": {**vars(a), "workdir": str(work), "restrictions": rs},
        "wall_s": wall,
        "cpu_s": cpu,
        **{
            f"{x}_over_{y}_{kind}": t[x] / t[y]
            for kind, t in (("wall", wall), ("cpu", cpu))
            for x, y in (
                ("batched", "sequential"),
                ("batched", "unrestricted"),
                ("sequential", "unrestricted"),
            )
        },  # fmt: skip
    }
    print(json.dumps({k: v for k, v in out.items() if k != "settings"}, indent=1))
    (work / "bench.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""CPU benchmark (SPEC §6, issue 3/7): LLC at 20 checkpoints of a p = 23, K = 256 quadratic net,
4 chains × 300 SGLD steps (100 burn-in + 200 draws), batch 128, ε = 1e-4, γ = 5, nβ = B/ln B.

Side by side in one process (the machine is shared, so only ratios within one run mean much):
  grokbasin      ``estimate_runs`` over all checkpoints × chains in one batched call (the real API,
                 fast quadratic gradient + fused in-place SGLD, replicas split over ``--workers``
                 CPU threads: default all cores), timed before and after devinterp
  devinterp      devinterp 1.3.2 ``estimate_learning_coeff``, one checkpoint after another, with
                 1 and with ``--workers`` torch threads; the faster is the reference
  loop           one chain at a time, plain torch autograd + torch.randn SGLD
  --ablation     the same batched call with the reference paths: autograd + generic step,
                 fast gradient + generic step, fast gradient + fused step (1 and N workers)
  --scaling      chain-steps/s of the fused path (1 worker) as the replica count R goes 1 → 256
  --micro        per-step pieces at R = 80: noise generators, gradients, 1 vs N workers

    python benchmarks/bench_llc_cpu.py [--workers N] [--checkpoints 20] [--ablation] [--scaling]
                                       [--micro] [--skip-devinterp] [--skip-loop] [--root DIR]

``--paper``: paper A scale instead (issue 11, SPEC §6): checkpoints of the ``paper-fig3`` run
(p = 53, K = 1024, trained here on first use, ~1 min) with the authors' sampler, ε = 5e-4,
γ = 5, nβ = 26.4, 3 chains × (100 burn-in + 500 draws), batch 128; ``--checkpoints`` of them
(default 8, spread over the run) for both sides. It also measures this CPU's sgemm peak with
torch on 1 and 2 threads (before and after) and prints the achieved FLOP/s of each method at
6·B·K·p FLOP per chain-step (the three matmuls of the quadratic-net gradient).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import time
import warnings

import torch

from grokbasin.config import LLCConfig, build_config
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.targets import from_modular, modular_train_rows
from grokbasin.llc.trajectory import estimate_runs
from grokbasin.losses import centred_mse
from grokbasin.tasks.modular import all_pairs
from grokbasin.train.runner import train

CHAINS, BURNIN, DRAWS, BATCH, EPS, GAMMA = 4, 100, 200, 128, 1e-4, 5.0
STEPS = BURNIN + DRAWS
NBETA: float | str = "auto"  # B/ln B = 26.38 at B = 128; --paper: 26.4 (authors' code)


def paper_scale() -> None:
    """Switch the module's sampler settings to paper A's authors' code (SPEC §3.3)."""
    global CHAINS, BURNIN, DRAWS, EPS, GAMMA, STEPS, NBETA
    CHAINS, BURNIN, DRAWS, EPS, GAMMA, NBETA = 3, 100, 500, 5e-4, 5.0, 26.4
    STEPS = BURNIN + DRAWS


def sgemm_peak(threads: int, n: int = 4096, reps: int = 3) -> float:
    """Best-of-``reps`` GFLOP/s of an n×n float32 matmul on ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


class QuadNet(torch.nn.Module):
    """The quadratic net as a conventional single-model nn.Module (what devinterp samples)."""

    def __init__(self, W: torch.Tensor, V: torch.Tensor):
        super().__init__()
        self.W, self.V = torch.nn.Parameter(W.clone()), torch.nn.Parameter(V.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.W.shape[0] // 2
        h = self.W[x[:, 0]] + self.W[x[:, 1] + p]
        return (h * h) @ self.V.T


def loop_baseline(ckpts: list[dict], x, y, rows, nbeta: float) -> float:
    """One chain at a time, torch.optim-style SGLD with torch.randn noise."""
    t0 = time.perf_counter()
    n = rows.shape[0]
    for ck in ckpts:
        for chain in range(CHAINS):
            torch.manual_seed(chain)
            net = QuadNet(ck["W"][0], ck["V"][0])
            center = [p.detach().clone() for p in net.parameters()]
            for step in range(STEPS):
                if step % (n // BATCH) == 0:
                    perm = rows[torch.randperm(n)]
                j = step % (n // BATCH)
                idx = perm[j * BATCH : (j + 1) * BATCH]
                loss = centred_mse(net(x[idx])[None], y[idx][None])[0]
                net.zero_grad()
                loss.backward()
                with torch.no_grad():
                    for p, c in zip(net.parameters(), center, strict=True):
                        d = nbeta * p.grad + GAMMA * (p - c)
                        p.add_(-0.5 * EPS * d + math.sqrt(EPS) * torch.randn_like(p))
    return time.perf_counter() - t0


def devinterp_baseline(ckpts: list[dict], x, y, rows, nbeta: float) -> float | None:
    """devinterp 1.3.2 with the same sampler settings, one checkpoint at a time (None if absent)."""
    try:
        from devinterp.optim.sgld import SGLD
        from devinterp.slt.sampler import estimate_learning_coeff
    except ImportError:
        return None
    ds = torch.utils.data.TensorDataset(x[rows], y[rows])
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)

    def evaluate(model, data):
        xb, yb = data
        return centred_mse(model(xb)[None], yb[None])[0]

    warnings.filterwarnings("ignore", module="devinterp")
    t0 = time.perf_counter()
    for ck in ckpts:
        estimate_learning_coeff(
            QuadNet(ck["W"][0], ck["V"][0]),
            loader,
            evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs={"lr": EPS, "localization": GAMMA, "nbeta": nbeta},
            num_chains=CHAINS,
            num_draws=DRAWS,
            num_burnin_steps=BURNIN,
            cores=1,
            seed=0,
            device="cpu",
            verbose=False,
        )
    return time.perf_counter() - t0


def batched(
    cfg, ckpts: list[dict], copies: int, steps: int, fast: bool, fused: bool, workers: int = 1
) -> float:
    """Wall time of one estimate_llc call over len(ckpts) groups × ``copies`` chains."""
    p0 = {
        k: torch.cat([c[k] for c in ckpts]).repeat_interleave(copies, 0).contiguous()
        for k in ckpts[0]
    }
    rows = modular_train_rows(cfg).repeat(len(ckpts), 1).repeat_interleave(copies, 0)
    target = from_modular(cfg, p0, rows, BATCH, fast=fast)
    burnin = steps // 3
    t0 = time.perf_counter()
    estimate_llc(
        target,
        groups=len(ckpts),
        chains=copies,
        step_size=EPS,
        gamma=GAMMA,
        burnin=burnin,
        draws=steps - burnin,
        seed=1,
        diagnose=False,
        fused=fused,
        cpu_workers=workers,
    )
    return time.perf_counter() - t0


def _ms(fn, reps: int = 20) -> float:
    """Mean milliseconds per call after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def micro(cfg, ckpts: list[dict], workers: int) -> None:
    """Per-step pieces at R = len(ckpts)·CHAINS on one thread, each timed alone."""
    from grokbasin import rng
    from grokbasin.llc import samplers
    from grokbasin.llc.fast_quadratic import QuadraticGrad
    from grokbasin.llc.samplers import sgld

    p0 = {
        k: torch.cat([c[k] for c in ckpts]).repeat_interleave(CHAINS, 0).contiguous()
        for k in ckpts[0]
    }
    R = p0["W"].shape[0]
    n = sum(v[0].numel() for v in p0.values())
    rows = modular_train_rows(cfg).repeat(len(ckpts), 1).repeat_interleave(CHAINS, 0)
    keys = rng.key(list(range(R)))
    stream = rng.NormalStream(R, n)
    print(f"\n| piece (R = {R}, {n} parameters each) | ms per step |\n|---|---|")
    print(
        f"| noise: rng.normal (24-bit inverse CDF, 2 lowbias32 rounds) | "
        f"{_ms(lambda: rng.normal(keys, (n,))):.2f} |"
    )
    print(
        f"| noise: rng.NormalStream (SplitMix64 + polynomial Box-Muller, torch ops) | "
        f"{_ms(lambda: stream(keys, 3)):.2f} |"
    )
    print(
        f"| noise: torch.randn (not per-replica, for scale) | "
        f"{_ms(lambda: torch.randn(R, n)):.2f} |"
    )
    hyper = samplers.make_hyper(R, EPS, 26.0, GAMMA)
    setup = samplers.Setup(p0, hyper, keys, tuple(sorted(p0)))
    grads = {k: torch.randn_like(v) for k, v in p0.items()}
    for name, kernel in (
        ("torch ops (stream + 3 passes per tensor)", sgld.FUSED_TORCH),
        ("compiled CPU kernel (cpu_kernels.sgld_update)", sgld.FUSED_CPU),
    ):
        state = kernel.init({k: v.clone() for k, v in p0.items()}, setup)
        steps = iter(range(10**6))
        print(
            f"| noise + update: {name} | "
            f"{_ms(lambda s=state, k=kernel, t=steps: k.step(s, grads, next(t))):.2f} |"
        )
    idx = rng.permutation(keys, rows.shape[1])[:, :BATCH]
    ref = from_modular(cfg, p0, rows, BATCH, fast=False)
    x, y = all_pairs(cfg.task.p, cfg.task.op)
    out = {k: torch.empty_like(v) for k, v in p0.items()}
    print(f"| gradient: autograd | {_ms(lambda: ref.loss_and_grad(p0, idx)):.2f} |")
    for name, compiled in (("torch gather/scatter", False), ("compiled gather/scatter", True)):
        qg = QuadraticGrad(x, y, rows, cfg.task.p, use_kernels=compiled)
        print(
            f"| gradient: hand-written, {name}, into buffers | "
            f"{_ms(lambda q=qg: q(p0, idx, out)):.2f} |"
        )
    for w in sorted({1, workers}):
        ms = batched(cfg, ckpts, CHAINS, 60, True, True, w) / 60 * 1e3
        print(f"| whole fused sampler step, {w} CPU worker(s) | {ms:.2f} |")


FLOP_PER_STEP = 0.0  # set in main: 6·B·K·p, the gradient's three matmuls per chain-step


def _row(name: str, seconds: float, chain_steps: int, ref: float | None) -> None:
    ratio = f"{ref / seconds:7.1f}x" if ref else "       "
    rate = chain_steps / seconds
    gf = f" {rate * FLOP_PER_STEP / 1e9:6.1f} |" if FLOP_PER_STEP else ""
    print(f"| {name:34s} | {seconds:8.2f} | {rate:10.0f} | {ratio} |{gf}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--checkpoints", type=int, default=None, help="default 20; --paper: 8")
    ap.add_argument("--root", default="/tmp/grokbasin-bench")
    ap.add_argument("--paper", action="store_true", help="p=53, K=1024, the authors' sampler")
    ap.add_argument(
        "--devinterp-threads", default=None, help="comma-separated torch thread counts (1,N)"
    )
    ap.add_argument("--skip-devinterp", action="store_true")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--micro", action="store_true")
    a = ap.parse_args()
    global FLOP_PER_STEP
    peaks = {th: sgemm_peak(th) for th in sorted({1, a.workers})}
    torch.set_num_threads(1)
    if a.paper:
        from grokbasin.presets import preset

        paper_scale()
        cfg = build_config(preset("paper-fig3"), {"device": "cpu"})
        run = train(cfg, a.root, progress=False).run
        every = run.checkpoint_epochs()[1:]
        n_ck = a.checkpoints or 8
        epochs = [every[round(i * (len(every) - 1) / max(n_ck - 1, 1))] for i in range(n_ck)]
    else:
        cfg = build_config({}, {"train.checkpoint_every": 125})
        run = train(cfg, a.root, progress=False).run
        epochs = run.checkpoint_epochs()[1 : (a.checkpoints or 20) + 1]
    FLOP_PER_STEP = 6.0 * BATCH * cfg.model.width * cfg.task.p
    llc = LLCConfig(
        nbeta=NBETA,
        chains=CHAINS,
        burnin=BURNIN,
        draws=DRAWS,
        batch_size=BATCH,
        step_size=EPS,
        gamma=GAMMA,
        checkpoints=",".join(map(str, epochs)),
        seed=12345,
    )
    x, y = all_pairs(cfg.task.p, cfg.task.op)
    rows = modular_train_rows(cfg)[0]
    nbeta = llc.resolve_nbeta(rows.shape[0])
    ckpts = [run.load_checkpoint(e) for e in epochs]
    cs = len(epochs) * CHAINS * STEPS
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(flush=True)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"workers={a.workers}; {load}"
    )
    print(
        f"# {len(epochs)} checkpoints x {CHAINS} chains x {STEPS} steps = {cs} chain-steps, "
        f"p={cfg.task.p} K={cfg.model.width} batch {BATCH} eps {EPS} gamma {GAMMA} "
        f"nbeta {nbeta:.2f}"
    )
    print(
        "# sgemm peak (4096², float32, torch): "
        + ", ".join(f"{th} thread(s) {gf:.1f} GFLOP/s" for th, gf in peaks.items())
        + f"; {FLOP_PER_STEP / 1e6:.1f} MFLOP per chain-step (gradient matmuls)"
    )
    print("| method | wall s | chain-steps/s | vs devinterp | GFLOP/s |\n|---|---|---|---|---|")

    def grokbasin(workers: int) -> float:
        run.llc.unlink(missing_ok=True)
        torch.set_num_threads(workers)  # the sampler runs one replica shard per torch thread
        t0 = time.perf_counter()
        estimate_runs([run.path], llc, progress=False)
        dt = time.perf_counter() - t0
        torch.set_num_threads(1)
        print(
            f"# grokbasin, {workers} worker(s): {dt:.2f} s, {cs / dt:.0f} chain-steps/s", flush=True
        )
        return dt

    def devinterp(threads: int) -> float | None:
        torch.set_num_threads(threads)
        dt = None if a.skip_devinterp else devinterp_baseline(ckpts, x, y, rows, nbeta)
        torch.set_num_threads(1)
        if dt is not None:
            print(
                f"# devinterp, {threads} thread(s): {dt:.2f} s, {cs / dt:.0f} chain-steps/s",
                flush=True,
            )
        return dt

    t_gb = [grokbasin(a.workers)]
    di_threads = (
        sorted({int(t) for t in a.devinterp_threads.split(",")})
        if a.devinterp_threads
        else sorted({1, a.workers})
    )
    t_di = {th: devinterp(th) for th in di_threads}
    t_gb.append(grokbasin(a.workers))
    t_gb1 = grokbasin(1)
    ref = min(t_di.values()) if None not in t_di.values() else None
    for th, t in t_di.items():
        if t is not None:
            _row(f"devinterp 1.3.2, {th} torch thread(s)", t, cs, ref)
    _row(f"grokbasin, {a.workers} workers (before)", t_gb[0], cs, ref)
    _row(f"grokbasin, {a.workers} workers (after)", t_gb[1], cs, ref)
    _row("grokbasin, 1 worker", t_gb1, cs, ref)
    if not a.skip_loop:
        _row("per-chain torch loop", loop_baseline(ckpts, x, y, rows, nbeta), cs, ref)
    if a.ablation:
        for name, fast, fused, workers in (
            ("batched: autograd + generic step", False, False, 1),
            ("batched: fast grad + generic step", True, False, 1),
            ("batched: fast grad + fused step", True, True, 1),
            (f"batched: fast + fused, {a.workers} workers", True, True, a.workers),
        ):
            _row(name, batched(cfg, ckpts, CHAINS, STEPS, fast, fused, workers), cs, ref)
    after = {th: sgemm_peak(th) for th in sorted({1, a.workers})}
    print(
        "# sgemm peak after: "
        + ", ".join(f"{th} thread(s) {gf:.1f} GFLOP/s" for th, gf in after.items())
    )
    if a.micro:
        micro(cfg, ckpts, a.workers)
    if a.scaling:
        print("\n| replicas R | chain-steps/s (fused, 60 steps) |\n|---|---|")
        for R in (1, 4, 16, 64, 128, 256):
            groups = ckpts[: max(1, min(len(ckpts), R // CHAINS))]
            copies = R // len(groups)
            steps = 60
            dt = batched(cfg, groups, copies, steps, True, True)
            print(
                f"| {len(groups) * copies} | {len(groups) * copies * steps / dt:.0f} |", flush=True
            )


if __name__ == "__main__":
    main()

"""CPU benchmark (SPEC §6): LLC at 20 checkpoints of a p = 23, K = 256 quadratic net, 4 chains ×
300 SGLD steps (100 burn-in + 200 draws, batch 128): grokbasin's one batched call vs a
one-chain-at-a-time torch loop vs devinterp 1.3.2 (if installed). Prints wall times and ratios.

    python benchmarks/bench_llc_cpu.py [--threads 1] [--root /tmp/grokbasin-bench]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from grokbasin.config import LLCConfig, build_config
from grokbasin.llc.targets import modular_train_rows
from grokbasin.llc.trajectory import estimate_runs
from grokbasin.losses import centred_mse
from grokbasin.tasks.modular import all_pairs
from grokbasin.train.runner import train

CHAINS, BURNIN, DRAWS, BATCH, EPS, GAMMA = 4, 100, 200, 128, 1e-4, 5.0


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
            for step in range(BURNIN + DRAWS):
                if step % (n // BATCH) == 0:
                    perm = rows[torch.randperm(n)]
                j = step % (n // BATCH)
                idx = perm[j * BATCH : (j + 1) * BATCH]
                out = net(x[idx])
                loss = centred_mse(out[None], y[idx][None])[0]
                net.zero_grad()
                loss.backward()
                with torch.no_grad():
                    for p, c in zip(net.parameters(), center, strict=True):
                        d = nbeta * p.grad + GAMMA * (p - c)
                        p.add_(-0.5 * EPS * d + math.sqrt(EPS) * torch.randn_like(p))
    return time.perf_counter() - t0


def devinterp_baseline(ckpts: list[dict], x, y, rows, nbeta: float) -> float | None:
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

    t0 = time.perf_counter()
    for ck in ckpts:
        estimate_learning_coeff(
            QuadNet(ck["W"][0], ck["V"][0]), loader, evaluate=evaluate, sampling_method=SGLD,
            optimizer_kwargs={"lr": EPS, "localization": GAMMA, "nbeta": nbeta},
            num_chains=CHAINS, num_draws=DRAWS, num_burnin_steps=BURNIN, cores=1, seed=0,
            device="cpu", verbose=False,
        )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--root", default="/tmp/grokbasin-bench")
    ap.add_argument("--skip-devinterp", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = build_config({}, {"train.checkpoint_every": 125})
    run = train(cfg, a.root, progress=False).run
    epochs = run.checkpoint_epochs()[1:21]
    llc = LLCConfig(chains=CHAINS, burnin=BURNIN, draws=DRAWS, batch_size=BATCH, step_size=EPS,
                    gamma=GAMMA, checkpoints=",".join(map(str, epochs)), seed=12345)
    run.llc.unlink(missing_ok=True)
    t0 = time.perf_counter()
    estimate_runs([run.path], llc, progress=False)
    t_gb = time.perf_counter() - t0
    x, y = all_pairs(cfg.task.p, cfg.task.op)
    rows = modular_train_rows(cfg)[0]
    nbeta = llc.resolve_nbeta(rows.shape[0])
    ckpts = [run.load_checkpoint(e) for e in epochs]
    t_loop = loop_baseline(ckpts, x, y, rows, nbeta)
    t_di = None if a.skip_devinterp else devinterp_baseline(ckpts, x, y, rows, nbeta)
    steps = len(epochs) * CHAINS * (BURNIN + DRAWS)
    print(f"{len(epochs)} checkpoints x {CHAINS} chains x {BURNIN + DRAWS} steps = {steps} "
          f"chain-steps, threads={a.threads}")
    print(f"grokbasin batched : {t_gb:7.2f} s  ({steps / t_gb:8.0f} chain-steps/s)")
    print(f"per-chain loop    : {t_loop:7.2f} s  ({steps / t_loop:8.0f} chain-steps/s)  "
          f"ratio {t_loop / t_gb:.1f}x")
    if t_di is not None:
        print(f"devinterp 1.3.2   : {t_di:7.2f} s  ({steps / t_di:8.0f} chain-steps/s)  "
              f"ratio {t_di / t_gb:.1f}x")


if __name__ == "__main__":
    main()

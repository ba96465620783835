"""GPU benchmark (SPEC §6, issue 7 target 1): LLC trajectory at paper Fig. 3 scale — p = 53,
K = 1024 quadratic net, 100 checkpoints × 3 chains × (100 burn-in + 500 draws), batch 128 —
grokbasin's one batched call vs devinterp 1.3.2 on the same CUDA device.

devinterp runs ~425 chain-steps/s on an H100, so its full trajectory takes ~7 minutes; by default
it runs on ``--devinterp-checkpoints`` checkpoints and the ratio is of chain-steps/s (printed as
such). Exits with a clear message when CUDA is not available.

    python benchmarks/bench_llc_gpu.py [--checkpoints 100] [--devinterp-checkpoints 5]
                                       [--skip-devinterp] [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch

CHAINS, BURNIN, DRAWS, BATCH, EPS, GAMMA, P, K = 3, 100, 500, 128, 5e-4, 5.0, 53, 1024
PEAK_BW = {"H100": 3.35e12, "H200": 4.8e12}  # bytes/s (SXM datasheets)


def bytes_per_chain_step(p: int, k: int, batch: int) -> int:
    """A lower bound on DRAM traffic of one SGLD chain-step (float32): the update reads w, w*,
    ∇L and ξ and writes w; the gradient reads W rows and V and writes h, h², dh once each."""
    d = 3 * p * k
    return 4 * (5 * d + 4 * batch * k + 3 * p * k)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--devinterp-checkpoints", type=int, default=5)
    ap.add_argument("--skip-devinterp", action="store_true")
    ap.add_argument("--root", default="/tmp/grokbasin-bench-gpu")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "bench_llc_gpu: CUDA is not available on this machine; nothing to measure "
            "(run it on a GPU host; the CPU comparison is benchmarks/bench_llc_cpu.py)"
        )
    from grokbasin.config import LLCConfig, build_config
    from grokbasin.llc.targets import modular_train_rows
    from grokbasin.llc.trajectory import estimate_runs
    from grokbasin.tasks.modular import all_pairs
    from grokbasin.train.runner import train

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from bench_llc_cpu import QuadNet

    cfg = build_config(
        {}, {"task.p": P, "model.width": K, "train.checkpoint_every": 25, "device": "cuda"}
    )
    run = train(cfg, a.root, progress=False).run
    epochs = run.checkpoint_epochs()[1 : a.checkpoints + 1]
    llc = LLCConfig(
        chains=CHAINS,
        burnin=BURNIN,
        draws=DRAWS,
        batch_size=BATCH,
        step_size=EPS,
        gamma=GAMMA,
        checkpoints=",".join(map(str, epochs)),
        seed=1,
    )
    run.llc.unlink(missing_ok=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    estimate_runs([run.path], llc, device="cuda", progress=False)
    torch.cuda.synchronize()
    t_gb = time.perf_counter() - t0
    cs = len(epochs) * CHAINS * (BURNIN + DRAWS)
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BW.items() if k in name), None)
    rate = cs / t_gb
    bw = rate * bytes_per_chain_step(P, K, BATCH)
    print(
        f"# {name}, torch {torch.__version__}; {len(epochs)} checkpoints x {CHAINS} chains x "
        f"{BURNIN + DRAWS} steps, p={P} K={K} batch {BATCH}"
    )
    frac = f" ({bw / peak:.1%} of peak)" if peak else ""
    print(f"grokbasin: {t_gb:.2f} s, {rate:.0f} chain-steps/s, ~{bw / 1e9:.0f} GB/s{frac}")
    if a.skip_devinterp:
        return
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff

    from grokbasin.losses import centred_mse

    warnings.filterwarnings("ignore", module="devinterp")
    x, y = all_pairs(P, "add")
    rows = modular_train_rows(cfg)[0]
    ds = torch.utils.data.TensorDataset(x[rows].cuda(), y[rows].cuda())
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)

    def evaluate(model, data):
        return centred_mse(model(data[0])[None], data[1][None])[0]

    sub = epochs[: a.devinterp_checkpoints]
    t0 = time.perf_counter()
    for e in sub:
        ck = run.load_checkpoint(e, "cuda")
        estimate_learning_coeff(
            QuadNet(ck["W"][0], ck["V"][0]),
            loader,
            evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs={
                "lr": EPS,
                "localization": GAMMA,
                "nbeta": llc.resolve_nbeta(rows.shape[0]),
            },
            num_chains=CHAINS,
            num_draws=DRAWS,
            num_burnin_steps=BURNIN,
            cores=1,
            seed=0,
            device="cuda",
            verbose=False,
        )
    torch.cuda.synchronize()
    di_rate = len(sub) * CHAINS * (BURNIN + DRAWS) / (time.perf_counter() - t0)
    print(
        f"devinterp 1.3.2 ({len(sub)} checkpoints): {di_rate:.0f} chain-steps/s; "
        f"ratio {rate / di_rate:.0f}x"
    )


if __name__ == "__main__":
    main()

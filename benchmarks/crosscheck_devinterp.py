"""Cross-check (issue 3): grokbasin's LLC vs devinterp 1.3.2 on a small trained quadratic net with
identical sampler settings (ε, γ, nβ, chains, burn-in, draws, batch) and devinterp's baseline
(``baseline='devinterp'``: the loss at w* on the first minibatch). Pass: the two means agree within
their combined standard error plus 5%. Prints both estimates; exit status 1 on a mismatch.

    python benchmarks/crosscheck_devinterp.py [--chains 8] [--burnin 200] [--draws 400]
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings

import numpy as np
import torch

from grokbasin.config import build_config
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.targets import from_modular, modular_train_rows
from grokbasin.losses import centred_mse
from grokbasin.tasks.modular import all_pairs
from grokbasin.train.runner import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--burnin", type=int, default=200)
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--step-size", type=float, default=1e-4)
    ap.add_argument("--gamma", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--root", default="/tmp/grokbasin-crosscheck")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = build_config(
        {}, {"task.p": 23, "model.width": 64, "train.epochs": 1500, "train.checkpoint_every": 500}
    )
    run = train(cfg, a.root, progress=False).run
    ck = run.load_checkpoint(run.checkpoint_epochs()[-1])
    rows = modular_train_rows(cfg)[:1]
    n = rows.shape[1]
    nbeta = a.batch / math.log(a.batch)
    C = a.chains
    p0 = {k: v[:1].repeat_interleave(C, 0).contiguous() for k, v in ck.items()}
    est = estimate_llc(
        from_modular(cfg, p0, rows.expand(C, -1).contiguous(), a.batch),
        chains=C,
        nbetas=[nbeta],
        step_size=a.step_size,
        gamma=a.gamma,
        burnin=a.burnin,
        draws=a.draws,
        baseline="devinterp",
        seed=7,
        diagnose=False,
    )
    gb = est.llc[0, 0]

    from bench_llc_cpu import QuadNet
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    warnings.filterwarnings("ignore", module="devinterp")
    x, y = all_pairs(cfg.task.p, cfg.task.op)
    ds = torch.utils.data.TensorDataset(x[rows[0]], y[rows[0]])
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, drop_last=True)

    def evaluate(model, data):
        return centred_mse(model(data[0])[None], data[1][None])[0]

    out = estimate_learning_coeff_with_summary(
        QuadNet(ck["W"][0], ck["V"][0]),
        loader,
        evaluate=evaluate,
        sampling_method=SGLD,
        optimizer_kwargs={"lr": a.step_size, "localization": a.gamma, "nbeta": nbeta},
        num_chains=C,
        num_draws=a.draws,
        num_burnin_steps=a.burnin,
        cores=1,
        seed=3,
        device="cpu",
        verbose=False,
    )
    di = np.array([out[f"llc-chain/{i}"] for i in range(C)])
    se = math.sqrt(gb.var(ddof=1) / C + di.var(ddof=1) / C)
    diff, tol = abs(gb.mean() - di.mean()), se + 0.05 * abs(di.mean())
    print(
        f"# p={cfg.task.p} K={cfg.model.width} n={n} batch {a.batch} eps {a.step_size} "
        f"gamma {a.gamma} nbeta {nbeta:.2f} chains {C} burn-in {a.burnin} draws {a.draws}"
    )
    print(f"grokbasin      : {gb.mean():.3f} ± {gb.std(ddof=1) / math.sqrt(C):.3f} (se)")
    print(f"devinterp 1.3.2: {di.mean():.3f} ± {di.std(ddof=1) / math.sqrt(C):.3f} (se)")
    print(
        f"|diff| = {diff:.3f} vs allowed {tol:.3f} (combined se + 5%): "
        f"{'AGREE' if diff <= tol else 'MISMATCH'}"
    )
    sys.exit(0 if diff <= tol else 1)


if __name__ == "__main__":
    main()

"""A paper-A run's LLC trajectory under each of its samplers beside Thm 5.5's K_eff prediction.

Usage: python docs/paper-scale/trajectory_keff.py RUN_DIR OUT.png [--every N]

One panel per sampler estimated on the run (λ̂ chain mean and range, with train and validation
accuracy), and one panel with K_eff (τ = 1% of the largest ‖V[:, j]‖, theory.basins.REL_TAU) and
the prediction K_eff(3p−1)/2 with the data cap p(N−1)/2. Prints a table every N steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from grokbasin.config import build_config, load_yaml
from grokbasin.report.figures import PALETTE, new_figure, save_png
from grokbasin.store.query import Want, by_epoch, llc_rows
from grokbasin.store.rundir import RunDir, read_parquet
from grokbasin.theory.basins import data_cap, run_effective_width

SAMPLERS = {  # label -> (ε, γ) at nβ 26.4, 3 × (100 + 500) steps, batch 128
    "paper (ε 5e-4, γ 5)": (5e-4, 5.0),
    "calibrated (ε 2e-3, γ 100)": (2e-3, 100.0),
    "authors' sweep (ε 4e-4, γ 100)": (4e-4, 100.0),
}


def sampler_hash(eps: float, gamma: float) -> str:
    from grokbasin.config import LLCConfig

    return LLCConfig(
        chains=3, burnin=100, draws=500, step_size=eps, gamma=gamma, nbeta=26.4, batch_size=128
    ).sampler_hash()


def main() -> None:
    run = RunDir(Path(sys.argv[1]))
    out = Path(sys.argv[2])
    every = int(sys.argv[sys.argv.index("--every") + 1]) if "--every" in sys.argv else 1000
    m = sorted(read_parquet(run.metrics).to_pylist(), key=lambda r: r["epoch"])
    steps = np.array([r["epoch"] for r in m])
    lams = {}
    for label, (eps, gamma) in SAMPLERS.items():
        b = by_epoch(llc_rows([Want(run.path, sampler_hash(eps, gamma), 26.4)])[0])
        if b:
            lams[label] = b
    keff = {r["epoch"]: r for r in run_effective_width(run)}
    fig, axes = new_figure(1, len(lams) + 1, width=4.2 * (len(lams) + 1), row_height=3.4)
    for ax, (label, b) in zip(axes[0], lams.items(), strict=False):
        e = np.array(list(b))
        v = [np.asarray(x) for x in b.values()]
        ax.plot(e, [x.mean() for x in v], color=PALETTE[2], label="λ̂ (chain mean)")
        ax.fill_between(e, [x.min() for x in v], [x.max() for x in v], color=PALETTE[2], alpha=0.3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("LLC")
        acc = ax.twinx()
        acc.plot(steps, [r["train_acc"] for r in m], color=PALETTE[0], lw=0.8, label="train acc")
        acc.plot(steps, [r["val_acc"] for r in m], color=PALETTE[1], lw=0.8, label="val acc")
        acc.set_ylim(0, 1.05)
        acc.legend(fontsize=6, loc="center right")
    ax = axes[0, -1]
    ke = np.array(list(keff))
    ax.plot(ke, [keff[e]["llc_keff"] for e in ke], color=PALETTE[3], label="K_eff(3p−1)/2")
    cfg = build_config(load_yaml(run.config))
    cap = data_cap(cfg.task.p, cfg.task.n_train)
    ax.axhline(cap, ls=":", c="grey", label=f"data cap p(N−1)/2 = {cap:,.0f}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("Thm 5.5 prediction")
    ax.set_title("K_eff (τ = 1% of max ‖V[:, j]‖)", fontsize=9)
    ax.legend(fontsize=7)
    save_png(fig, out)
    cols = ["step", "train_acc", "val_acc", "K_eff", "K_eff(3p-1)/2", *lams]
    print(" | ".join(cols))
    at = {r["epoch"]: r for r in m}
    for e in steps:
        if e % every and e != steps[-1]:
            continue
        lam = [f"{np.mean(b[e]):.1f}" if e in b else "" for b in lams.values()]
        k = keff[int(e)]
        print(
            f"{e} | {at[e]['train_acc']:.3f} | {at[e]['val_acc']:.3f} | {k['k_eff']} | "
            f"{k['llc_keff']:.0f} | " + " | ".join(lam)
        )
    print(f"figure: {out}")
    mirror(run, m, lams)


def mirror(run: RunDir, m: list[dict], lams: dict[str, dict[int, list[float]]]) -> None:
    """§6.3's claim, measured: Pearson r of λ̂ with the validation loss (training convention and
    the authors' logged convention) and with the validation error; where each curve peaks."""
    from authors_log import logged_losses

    cfg = build_config(load_yaml(run.config))
    eps = [int(r["epoch"]) for r in m]
    val_logged = dict(zip(eps, logged_losses(run, cfg, eps)["val"], strict=True))
    at = {int(r["epoch"]): r for r in m}
    peak = max(val_logged, key=val_logged.get)
    vl_peak = max(at, key=lambda e: at[e]["val_loss"])
    print(f"val loss peaks at step {vl_peak} (training convention), {peak} (authors' logged)")
    for label, b in lams.items():
        e = sorted(b)
        lam = np.array([np.mean(b[k]) for k in e])
        cols = {
            "val loss": [at[k]["val_loss"] for k in e],
            "val loss (authors' logged)": [val_logged[k] for k in e],
            "val error": [1 - at[k]["val_acc"] for k in e],
        }
        rs = ", ".join(f"r({k}) = {np.corrcoef(lam, v)[0, 1]:.2f}" for k, v in cols.items())
        print(f"{label}: λ̂ peaks at step {e[int(lam.argmax())]}; {rs}")


if __name__ == "__main__":
    main()

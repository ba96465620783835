"""Paper A's authors' own logged Fig.-3 trajectory beside grokbasin's, in their units.

Usage: python docs/paper-scale/authors_log.py RUN_DIR [OUT.png]

RUN_DIR is `grokbasin run --preset paper-fig3` (step units), estimated a second time with the
sampler the authors' earlier training.py hard-coded for that log (SGLD ε 4e-4, γ 100, nβ =
default_nbeta = 128/ln 128, 3 chains × (100 + 500) steps):

    grokbasin llc estimate RUN_DIR --chains 3 --burnin 100 --draws 500 \
        --step-size 4e-4 --gamma 100 --nbeta 26.4 --llc-batch-size 128

The authors' values are cited, every 500 steps and at the peak, from their repository
SergioEstanRuiz/geom_phase_transitions, file results/sweep_batch_lr_wd/
run_batch_size=128_lr=0.0001_weight_decay=0.0001/loss_data.csv (columns batch = optimiser step,
llc, train_acc, val_acc, train_loss). Their train_loss is the per-sample, output-centred loss of
their evaluation (grokbasin.losses.authors_logged_mse), not the training loss.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from grokbasin.config import LLCConfig, RunConfig, load_yaml
from grokbasin.losses import authors_logged_mse
from grokbasin.report.figures import PALETTE, new_figure, save_png
from grokbasin.store.query import Want, by_epoch, llc_rows
from grokbasin.store.rundir import RunDir, read_parquet
from grokbasin.train.loop import make_setup

# step: (llc, train_acc, val_acc, logged train_loss), cited from the authors' CSV (see above)
AUTHORS = {
    100: (9.85, 0.2208, 0.0071, 0.009133),
    500: (10.38, 0.9671, 0.0006, 0.008514),
    1000: (14.08, 1.0, 0.0, 0.006932),
    1500: (21.47, 1.0, 0.0018, 0.004704),
    2000: (30.02, 1.0, 0.0208, 0.003323),
    2500: (35.85, 1.0, 0.0546, 0.003080),
    3000: (38.67, 1.0, 0.0765, 0.003042),
    3500: (40.12, 1.0, 0.1109, 0.003010),
    4000: (40.58, 1.0, 0.1465, 0.002959),
    4400: (40.86, 1.0, 0.1845, 0.002898),
    5000: (40.44, 1.0, 0.2705, 0.002770),
    5500: (40.05, 1.0, 0.3731, 0.002655),
    6000: (39.31, 1.0, 0.5261, 0.002539),
    6500: (38.50, 1.0, 0.7171, 0.002448),
    7000: (37.53, 1.0, 0.8630, 0.002423),
    7500: (36.63, 1.0, 0.9531, 0.002444),
    7700: (36.29, 1.0, 0.9739, 0.002484),
}
SWEEP_SAMPLER = {
    "chains": 3, "burnin": 100, "draws": 500, "step_size": 4e-4, "gamma": 100.0,
    "nbeta": 26.4, "batch_size": 128,
}  # fmt: skip


def logged_losses(run: RunDir, cfg: RunConfig, epochs: list[int]) -> dict[str, list[float]]:
    """Train and validation loss at each checkpoint in the authors' logged convention."""
    s = make_setup(cfg)
    out: dict[str, list[float]] = {"train": [], "val": []}
    with torch.no_grad():
        for e in epochs:
            params = run.load_checkpoint(e)
            for split, idx in (("train", s.task.train_idx), ("val", s.task.val_idx)):
                pred = s.model.forward(params, s.task.x[idx])
                out[split].append(float(authors_logged_mse(pred, s.task.y[idx])[0]))
    return out


def ours(run_dir: Path) -> dict[str, np.ndarray]:
    """Our run's steps, accuracies, the authors' logged-loss convention, and the chain-mean λ̂."""
    run = RunDir(run_dir)
    cfg = RunConfig.model_validate(load_yaml(run.config))
    rows = sorted(read_parquet(run.metrics).to_pylist(), key=lambda r: r["epoch"])
    logged = logged_losses(run, cfg, [int(r["epoch"]) for r in rows])["train"]
    want = Want(run.path, LLCConfig(**SWEEP_SAMPLER).sampler_hash(), 26.4)
    lam = by_epoch(llc_rows([want])[0])
    return {
        "step": np.array([r["epoch"] for r in rows]),
        "train_acc": np.array([r["train_acc"] for r in rows]),
        "val_acc": np.array([r["val_acc"] for r in rows]),
        "logged_loss": np.array(logged),
        "llc_step": np.array(list(lam)),
        "llc": np.array([np.mean(v) for v in lam.values()]),
    }


def plot(o: dict[str, np.ndarray], out: Path) -> None:
    steps = np.array(list(AUTHORS))
    a = np.array(list(AUTHORS.values()))
    fig, axes = new_figure(1, 2, width=10.0, row_height=3.6)
    ax = axes[0, 0]
    ax.plot(o["llc_step"], o["llc"], color=PALETTE[2], label="grokbasin λ̂ (ε 4e-4, γ 100)")
    ax.plot(steps, a[:, 0], "o", color="black", ms=3, label="authors' log (same sampler)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("LLC")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("λ̂ every 100 steps, p=53 K=1024 lr 1e-4 wd 1e-4")
    ax2 = axes[0, 1]
    ax2.plot(o["step"], o["train_acc"], color=PALETTE[0], label="train acc (ours)")
    ax2.plot(o["step"], o["val_acc"], color=PALETTE[1], label="val acc (ours)")
    ax2.plot(steps, a[:, 1], "o", color=PALETTE[0], ms=3, label="train acc (authors)")
    ax2.plot(steps, a[:, 2], "s", color=PALETTE[1], ms=3, label="val acc (authors)")
    ax3 = ax2.twinx()
    ax3.plot(o["step"], o["logged_loss"], "--", color="grey", label="logged train loss (ours)")
    ax3.plot(steps, a[:, 3], "x", color="grey", ms=4, label="logged train loss (authors)")
    ax3.set_ylabel("per-sample output-centred loss")
    ax2.set_xlabel("optimiser step")
    ax2.legend(fontsize=6, loc="center right")
    ax3.legend(fontsize=6, loc="upper right")
    ax2.set_title("accuracy and the authors' logged loss")
    save_png(fig, out)


def main() -> None:
    run_dir = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("authors-log.png")
    o = ours(run_dir)
    plot(o, out)
    at = {int(s): k for k, s in enumerate(o["llc_step"])}
    mt = {int(s): k for k, s in enumerate(o["step"])}
    print("step  authors_llc  ours_llc  authors_val_acc  ours_val_acc  authors_loss  ours_loss")
    for s, (lam, _, va, loss) in AUTHORS.items():
        ol = o["llc"][at[s]] if s in at else float("nan")
        k = mt.get(s)
        ova = o["val_acc"][k] if k is not None else float("nan")
        olo = o["logged_loss"][k] if k is not None else float("nan")
        print(f"{s:5d} {lam:11.2f} {ol:9.2f} {va:16.4f} {ova:13.4f} {loss:13.6f} {olo:10.6f}")
    print(f"figure: {out}")


if __name__ == "__main__":
    main()

"""Figures of docs/refined-llc.md from the run directories its commands filled.

python docs/refined-llc/figures.py FIG3_RUN TRANSFORMER_RUN [OUT_DIR]

Reads only stored results (llc.parquet through ``store.query``, metrics.parquet and the
``llc influence`` file); samples nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from grokbasin.config import LLCConfig  # noqa: E402
from grokbasin.store.binding import run_config  # noqa: E402
from grokbasin.store.query import Want, by_epoch, llc_rows, restriction_hashes  # noqa: E402
from grokbasin.store.rundir import RunDir, read_parquet  # noqa: E402

FIG3_SAMPLER = {
    "step_size": 2e-3,
    "gamma": 100.0,
    "nbeta": 26.4,
    "data": "train",
}  # calibrated (paper-scale.md)
TRANSFORMER_SAMPLER = {
    "step_size": 3e-5,
    "gamma": 1000.0,
    "nbeta": 100.0,
    "chains": 2,
    "burnin": 400,
    "draws": 400,
    "batch_size": 64,
    "data": "train",
}


UNHEALTHY = {"nonfinite", "explosion", "negative", "rhat", "nonstationary"}  # low_ess only warns


def series(run: Path, shash: str) -> tuple[np.ndarray, ...]:
    """(epochs, chain mean, chain std, flagged) of one estimate's rows at its main nβ; flagged:
    some chain of the checkpoint carries a health flag other than low ESS."""
    rows = llc_rows([Want(run, shash)])[0]
    per = by_epoch(rows)
    bad = {int(r["epoch"]) for r in rows if UNHEALTHY & set((r["flags"] or "").split(","))}
    e = np.array(list(per), dtype=float)
    v = [np.asarray(x, float) for x in per.values()]
    m = np.array([np.nanmean(x) for x in v])
    return e, m, np.array([np.nanstd(x, ddof=1) for x in v]), np.array([k in bad for k in per])


def metrics(run: Path) -> dict[str, np.ndarray]:
    t = read_parquet(RunDir(run).metrics).to_pydict()
    return {k: np.asarray(t[k], float) for k in ("epoch", "val_acc", "train_acc")}


def band(ax, run: Path, shash: str, label: str, **kw) -> int:
    """One estimate's chain mean ± std; flagged checkpoints marked ×. Returns their count."""
    e, m, s, bad = series(run, shash)
    line = ax.plot(e, m, label=label, **kw)[0]
    ax.fill_between(e, m - s, m + s, color=line.get_color(), alpha=0.2, lw=0)
    ax.plot(e[bad], m[bad], "x", color=line.get_color(), ms=7)
    return int(bad.sum())


def accuracy(ax, run: Path) -> None:
    m = metrics(run)
    twin = ax.twinx()
    twin.plot(m["epoch"], m["val_acc"], color="0.5", lw=1, ls=":", label="val acc")
    twin.set_ylim(-0.02, 1.02)
    twin.set_ylabel("val acc (dotted)")


def sampler_of(run: Path, settings: dict) -> LLCConfig:
    return run_config(RunDir(run)).llc.model_copy(update=settings)


def fig3_panels(run: Path, out: Path) -> None:
    """λ̂ (train), restricted to W and to V, and data-refined on the held-out pairs."""
    llc = sampler_of(run, FIG3_SAMPLER)
    restricted = restriction_hashes(run, llc)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    band(ax, run, llc.sampler_hash(), "all weights, train pairs", color="C0")
    band(ax, run, llc.model_copy(update={"data": "val"}).sampler_hash(), "data-refined: val pairs",
         color="C3")  # fmt: skip
    ax.set(xlabel="optimiser step", ylabel="λ̂", title="λ̂ and the data-refined λ̂ (val pairs)")
    ax.legend(loc="upper left", fontsize=8)
    accuracy(ax, run)
    ax = axes[1]
    for (name, (h, _)), c in zip(restricted.items(), ("C1", "C2"), strict=False):
        band(ax, run, h, f"restricted to {name}", color=c)
    ax.set(xlabel="optimiser step", ylabel="λ̂", title="weight-restricted λ̂: W vs V")
    ax.legend(loc="upper left", fontsize=8)
    accuracy(ax, run)
    fig.tight_layout()
    fig.savefig(out / "fig3-refined.png", dpi=110)


def split_half_r(train: np.ndarray, probe: np.ndarray) -> float:
    """Correlation over training pairs of the BIFs from the first and the second half of the
    draws: how much of a pair's BIF is signal rather than sampling noise."""
    from grokbasin.llc import bif

    D = train.shape[1] // 2
    a, b = (
        bif(train[None, :, s], probe[:, s].mean(-1, keepdims=True)[None], kind="influence")[0, :, 0]
        for s in (slice(0, D), slice(D, None))
    )
    return float(np.corrcoef(a, b)[0, 1])


def influence_stats(path: Path) -> dict[int, dict[str, float]]:
    """Per checkpoint of one ``llc influence`` file: the training pairs' median and spread of
    BIF, and the split-half reliability of a pair's BIF."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        epochs = sorted(int(k.split("_")[1]) for k in f.keys() if k.startswith("bif_"))
        out = {}
        for e in epochs:
            b, train = f.get_tensor(f"bif_{e}")[0], f.get_tensor(f"samples_train_{e}")[0]
            out[e] = {
                "chains": train.shape[0],
                "draws": train.shape[1],
                "median": float(np.median(b)),
                "std": float(b.std()),
                "split_half_r": split_half_r(train, f.get_tensor(f"samples_probe_{e}")[0]),
            }
    return out


def influence_panels(run: Path, out: Path) -> dict[str, dict[int, dict[str, float]]]:
    """BIF of every training pair on the mean held-out loss, before and after grokking (the
    newest influence file); returns :func:`influence_stats` of every influence file."""
    from safetensors import safe_open

    files = sorted((run / "llc_influence").glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    stats = {p.name: influence_stats(p) for p in files}
    with safe_open(str(files[-1]), "np") as f:
        epochs = sorted(int(k.split("_")[1]) for k in f.keys() if k.startswith("bif_"))
        bif = {e: f.get_tensor(f"bif_{e}")[0] for e in epochs}
        train = {e: f.get_tensor(f"samples_train_{e}")[0] for e in epochs}  # [C, D, n]
    newest = stats[files[-1].name]
    loss = {e: train[e].mean((0, 1)) for e in epochs}
    a, b = epochs[0], epochs[-1]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    lo, hi = np.percentile(np.concatenate([bif[a], bif[b]]), [0.5, 99.5])
    for e, c in ((a, "C0"), (b, "C3")):
        r = newest[e]["split_half_r"]
        axes[0].hist(bif[e], bins=60, range=(lo, hi), alpha=0.6, color=c,
                     label=f"step {e} (split-half r {r:.2f})")  # fmt: skip
    axes[0].set(xlabel="BIF of a training pair on the mean val loss", ylabel="training pairs")
    axes[0].legend(fontsize=8)
    axes[1].scatter(bif[a], bif[b], s=3, alpha=0.4)
    r = np.corrcoef(bif[a], bif[b])[0, 1]
    axes[1].set(xlabel=f"BIF at step {a}", ylabel=f"BIF at step {b}", title=f"r = {r:.2f}")
    for e, c in ((a, "C0"), (b, "C3")):
        axes[2].scatter(loss[e], bif[e], s=3, alpha=0.4, color=c, label=f"step {e}")
    axes[2].set(xlabel="posterior mean loss of the pair", ylabel="BIF")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    C, D = newest[a]["chains"], newest[a]["draws"]
    fig.suptitle(f"{C} chains × {D} draws per checkpoint", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "fig3-influence.png", dpi=110)
    return stats


def transformer_panels(run: Path, out: Path) -> dict[str, int]:
    """λ̂ of the whole transformer, of each layer and of each attention head; returns each
    estimate's number of flagged checkpoints."""
    llc = sampler_of(run, TRANSFORMER_SAMPLER)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    flagged = {"all weights": band(axes[0], run, llc.sampler_hash(), "all weights", color="k")}
    for name, (h, _) in restriction_hashes(run, llc).items():
        ax = axes[0] if name.startswith("layer") else axes[1]
        first_layer = name in ("layer0",) or name.startswith("L0")
        flagged[name] = band(ax, run, h, name, ls="-" if first_layer else "--")
    axes[0].set(xlabel="epoch", ylabel="λ̂", title="per layer (× flagged chains)")
    axes[1].set(xlabel="epoch", ylabel="λ̂", title="per attention head: Wqkv, bqkv, Wo slices")
    for ax in axes:
        ax.legend(fontsize=7, ncol=2, loc="upper left")
        accuracy(ax, run)
    fig.tight_layout()
    fig.savefig(out / "transformer-heads.png", dpi=110)
    return flagged


def main(argv: list[str]) -> None:
    fig3, transformer = Path(argv[0]), Path(argv[1])
    out = Path(argv[2]) if len(argv) > 2 else Path(__file__).parent
    out.mkdir(parents=True, exist_ok=True)
    fig3_panels(fig3, out)
    print(influence_panels(fig3, out))
    print(transformer_panels(transformer, out))


if __name__ == "__main__":
    main(sys.argv[1:])

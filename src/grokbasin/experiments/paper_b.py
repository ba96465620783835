"""Paper B's experiments (arXiv 2512.00686, SPEC §3.8) as named experiments.

- ``llc-polynomial``: λ̂ of least-squares polynomial regressors vs degree, three domain widths.
- ``llc-low-rank``: λ̂ of W₂W₁ at a rank-matched realisable truth for ranks 1..d.
- ``llc-autoencoder``: λ̂ of the ReLU autoencoder d → 128 → r → 128 → d vs bottleneck r.
- ``arrhenius-grokking``: ΔF vs log(time to transition) over many seeds of the grokking MLP.
- ``arrhenius-tms``: the same over consecutive loss-curve transitions of many TMS runs.

Every family is one replica-batched computation: degrees, ranks, domain widths, repeats and
chains are replicas (smaller models padded with masks that keep the extra units off the output).
Sampler (ε, γ, steps) are the paper's; the paper does not state nβ for the regression families,
so they use nβ = n/ln n (β = 1/ln n, the theory's choice), full-batch gradients and a quarter of
the steps as burn-in. λ̂ values depend on these settings (SPEC §3.3), which every figure states.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grokbasin import rng
from grokbasin.analysis import free_energy as FE
from grokbasin.experiments.common import finish
from grokbasin.experiments.registry import ExperimentResult, register
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.targets import (
    from_functional,
    from_modular,
    modular_train_rows,
    repeat_replicas,
)
from grokbasin.models import regression as MR
from grokbasin.models import tms as TMS
from grokbasin.report.figures import PALETTE, THEORY_COLORS, new_figure, plot_linear_fit
from grokbasin.tasks import regression as TR
from grokbasin.theory import paper_b as TH
from grokbasin.train.generic import fit

# (ε, γ, total steps) from SPEC §3.8; grokking also fixes nβ = 2 and 3 chains.
SAMPLERS: dict[str, tuple[float, float, int]] = {
    "grokking": (3e-3, 5.0, 500),
    "tms": (5e-4, 1.0, 400),
    "polynomial": (1e-3, 1.0, 2000),
    "low_rank": (1e-3, 1.0, 2000),
    "autoencoder": (1e-5, 1.0, 2000),
}


def _sampler(kind: str, n: int, nbeta: float | None = None) -> dict[str, Any]:
    """estimate_llc keyword arguments for a family: the paper's ε, γ, steps; nβ = n/ln n."""
    eps, gamma, steps = SAMPLERS[kind]
    burn = steps // 4
    nb = nbeta if nbeta is not None else n / math.log(n)
    return {"step_size": eps, "gamma": gamma, "burnin": burn, "draws": steps - burn, "nbetas": [nb]}


def _describe(kw: dict[str, Any], chains: int, batch: str = "full batch") -> str:
    return (
        f"SGLD ε={kw['step_size']:g}, γ={kw['gamma']:g}, nβ={kw['nbetas'][0]:.4g}, "
        f"{kw['burnin']} burn-in + {kw['draws']} draws, {chains} chains, {batch}"
    )


def _chains_per_group(est: Any) -> np.ndarray:
    """[G, C] per-chain λ̂ at the single temperature."""
    return est.llc[:, 0, :]


# ---------------------------------------------------------------------------------------------
# LLC scaling families.


def polynomial_llcs(
    degrees: list[int],
    widths: list[float],
    repeats: int,
    chains: int,
    n: int = 500,
    device: str = "cpu",
    seed: int = 0,
    sampler: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """λ̂ per (degree, c, repeat) at the least-squares fit, in one batched sampler run (float64)."""
    grid = [(dg, c, r) for c in widths for dg in degrees for r in range(repeats)]
    G, D = len(grid), max(degrees)
    keys = rng.key([seed * 100003 + i for i in range(G)], device)
    x = torch.cat([TR.polynomial(keys[i : i + 1], n, c).x for i, (_, c, _) in enumerate(grid)])
    y = torch.cat([TR.polynomial(keys[i : i + 1], n, c).y for i, (_, c, _) in enumerate(grid)])
    x, y = x.double(), y.double()
    mask = MR.size_mask([dg + 1 for dg, _, _ in grid], device).double()
    p0 = MR.poly_lstsq(x, y, D, mask)
    mk = mask.repeat_interleave(chains, 0)
    feats = MR.poly_features(x, D).repeat_interleave(chains, 0)  # computed once, not per step
    target = from_functional(
        MR.poly_forward_features,
        MR.mse,
        repeat_replicas(p0, chains),
        feats,
        y.repeat_interleave(chains, 0),
        batch_size=n,
        per_replica=True,
        aux={"mask": mk},  # per-replica: sliced with the replicas when the sampler shards
    )
    kw = sampler or _sampler("polynomial", n)
    est = estimate_llc(target, groups=G, chains=chains, seed=seed, diagnose=False, **kw)
    lam = _chains_per_group(est)
    return [
        {
            "degree": dg,
            "c": c,
            "repeat": r,
            "llc": float(np.nanmean(lam[g])),
            "llc_std": float(np.nanstd(lam[g])),
            "theory": TH.polynomial_llc(dg),
            "theory_paper": TH.polynomial_llc_paper(dg),
        }
        for g, (dg, c, r) in enumerate(grid)
    ]


@register("llc-polynomial", "Paper B: LLC of polynomial regressors vs degree for c = 1, .75, .5")
def llc_polynomial(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    small = scale == "small"
    degrees = (
        [1, 2, 4, 8, 16, 32, 64]
        if small
        else sorted({int(round(v)) for v in np.logspace(0, 3, 16)})
    )
    widths, repeats, chains, n = [1.0, 0.75, 0.5], (2 if small else 10), (2 if small else 4), 500
    kw = _sampler("polynomial", n)
    rows = polynomial_llcs(degrees, widths, repeats, chains, n, device, sampler=kw)
    fig, ax = new_figure(width=6.4, row_height=4.0)
    a = ax[0, 0]
    summary = []
    for i, c in enumerate(widths):
        m = np.array(
            [[r["llc"] for r in rows if r["c"] == c and r["degree"] == dg] for dg in degrees]
        )
        a.errorbar(
            degrees,
            m.mean(1),
            yerr=m.std(1),
            fmt="o-",
            color=PALETTE[i],
            ms=3,
            capsize=2,
            label=f"SGLD λ̂, c = {c:g}",
        )
        below = float(np.mean(m.mean(1) < [TH.polynomial_llc(d) for d in degrees]))
        summary.append(
            {
                "c": c,
                "llc_at_max_degree": float(m[-1].mean()),
                "theory_at_max_degree": TH.polynomial_llc(degrees[-1]),
                "fraction_of_degrees_below_theory": below,
            }
        )
    dd = np.array(degrees, float)
    a.plot(dd, (dd + 1) / 2, "--", color=THEORY_COLORS[0], label="theory (d+1)/2")
    a.plot(dd, dd / 2, ":", color=THEORY_COLORS[1], label="paper's line d/2")
    a.set(
        xscale="log",
        yscale="log",
        xlabel="degree d",
        ylabel="LLC",
        title=f"Polynomial regressors, N = {n}: {_describe(kw, chains)}",
    )
    a.title.set_fontsize(7)
    a.legend()
    ordered = all(
        summary[i]["llc_at_max_degree"] >= summary[i + 1]["llc_at_max_degree"]
        for i in range(len(summary) - 1)
    )
    notes = [
        f"Estimates at degree {degrees[-1]}: "
        + ", ".join(f"c={s['c']:g}: {s['llc_at_max_degree']:.3g}" for s in summary)
        + f" vs theory {TH.polynomial_llc(degrees[-1]):g}.",
        "Paper B: estimates fall below (d+1)/2 and drop for narrower domains. Ours: "
        + (
            "below theory at high degree"
            if all(s["llc_at_max_degree"] < s["theory_at_max_degree"] for s in summary)
            else "NOT below theory"
        )
        + (
            " and ordered c=1 > .75 > .5 at the largest degree, as in the paper."
            if ordered
            else "; the narrow-domain ordering does NOT hold at the largest degree."
        ),
        "Why: monomials on [−c, c] have a Gram matrix whose eigenvalues fall geometrically (faster"
        " for small c), so most of the d+1 directions are too flat for nβ = n/ln n to resolve"
        " against γ; the estimate counts only the resolved ones (localised Laplace picture).",
    ]
    return finish(
        "llc-polynomial",
        scale,
        root,
        {"llc_polynomial": fig},
        {"llc_polynomial": rows},
        summary,
        notes,
        "λ̂ at the exact least-squares fit (float64) vs degree.",
    )


def low_rank_llcs(
    d: int,
    ranks: list[int],
    chains: int,
    n: int,
    device: str = "cpu",
    seed: int = 0,
    sampler: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """λ̂ of W₂W₁ (d → r → d) at the balanced SVD factorisation of a rank-r truth, per r."""
    G = len(ranks)
    keys = rng.key([seed * 100003 + r for r in ranks], device)
    data = TR.low_rank_linear(keys, d, ranks, n)
    M = torch.linalg.lstsq(data.x, data.y).solution.transpose(1, 2)
    mask = MR.size_mask(ranks, device)
    p = MR.lowrank_from_matrix(M, max(ranks))
    p0 = {"W1": p["W1"] * mask[:, :, None], "W2": p["W2"] * mask[:, None, :]}
    mk = mask.repeat_interleave(chains, 0)
    target = from_functional(
        MR.lowrank_forward,
        MR.mse,
        repeat_replicas(p0, chains),
        data.x.repeat_interleave(chains, 0),
        data.y.repeat_interleave(chains, 0),
        batch_size=n,
        per_replica=True,
        aux={"mask": mk},  # per-replica: sliced with the replicas when the sampler shards
    )
    kw = sampler or _sampler("low_rank", n)
    est = estimate_llc(target, groups=G, chains=chains, seed=seed, diagnose=False, **kw)
    lam = _chains_per_group(est)
    aw = _aoyagi_watanabe(d, ranks)
    return [
        {
            "d": d,
            "rank": r,
            "llc": float(np.nanmean(lam[g])),
            "llc_std": float(np.nanstd(lam[g])),
            "theory": TH.low_rank_llc(d, r),
            "theory_aw": aw[g],
        }
        for g, r in enumerate(ranks)
    ]


def _aoyagi_watanabe(d: int, ranks: list[int]) -> list[float]:
    """Aoyagi–Watanabe λ (grokbasin.theory.rrr) for model rank = true rank r, M = N = d."""
    from grokbasin.theory.rrr import rrr_learning_coefficient

    return [rrr_learning_coefficient(d, d, r, r)[0] for r in ranks]


@register("llc-low-rank", "Paper B: LLC of low-rank linear networks W2W1 vs rank, with theory")
def llc_low_rank(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    small = scale == "small"
    d = 10 if small else 100
    ranks = list(range(1, d + 1))
    chains, n = (2, 500) if small else (2, 1000)
    kw = _sampler("low_rank", n)
    rows = low_rank_llcs(d, ranks, chains, n, device, sampler=kw)
    r = np.array(ranks, float)
    lam = np.array([row["llc"] for row in rows])
    coef = np.linalg.lstsq(np.stack([r**2, r], 1), lam, rcond=None)[0]  # λ̂ ≈ a r² + b r
    fig, ax = new_figure(width=6.4, row_height=4.0)
    a = ax[0, 0]
    a.plot(r, lam, "o", color=PALETTE[0], ms=3, label="SGLD λ̂")
    a.plot(
        r,
        coef[0] * r**2 + coef[1] * r,
        "-",
        color=PALETTE[0],
        label=f"fit {coef[0]:.3g} r² + {coef[1]:.3g} r",
    )
    a.plot(r, r * (2 * d - r) / 2, "--", color=THEORY_COLORS[0], label="theory r(2d − r)/2")
    if d == 100:
        a.plot(
            r,
            -0.429 * r**2 + 87.3 * r,
            ":",
            color=THEORY_COLORS[1],
            label="paper's fit −0.429 r² + 87.3 r",
        )
    a.set(xlabel="rank r", ylabel="LLC", title=f"W₂W₁, d = {d}, N = {n}: {_describe(kw, chains)}")
    a.title.set_fontsize(7)
    a.legend()
    ratio = lam / (r * (2 * d - r) / 2)
    summary = [
        {
            "d": d,
            "fit_a": float(coef[0]),
            "fit_b": float(coef[1]),
            "theory_a": -0.5,
            "theory_b": float(d),
            "paper_a_d100": -0.429,
            "paper_b_d100": 87.3,
            "median_ratio_to_theory": float(np.median(ratio)),
        }
    ]
    notes = [
        f"Fit λ̂ ≈ {coef[0]:.3g} r² + {coef[1]:.3g} r; theory −0.5 r² + {d} r; "
        f"median λ̂/theory = {np.median(ratio):.3f} (range {ratio.min():.3f}–{ratio.max():.3f}).",
        "Paper B at d = 100: −0.429 r² + 87.3 r, i.e. ~13% below theory in the linear term. "
        + (
            "Ours is likewise below theory."
            if np.median(ratio) < 1
            else "Ours is NOT below theory at these settings."
        ),
    ]
    if small:
        notes.append(
            "Small scale uses d = 10, so the paper's d = 100 coefficients are not directly"
            " comparable; compare the ratio to theory instead."
        )
    return finish(
        "llc-low-rank",
        scale,
        root,
        {"llc_low_rank": fig},
        {"llc_low_rank": rows},
        summary,
        notes,
        "λ̂ at an exact minimum (balanced SVD factors of the OLS fit).",
    )


def autoencoder_llcs(
    d: int,
    bottlenecks: list[int],
    chains: int,
    n: int,
    train_steps: int,
    device: str = "cpu",
    seed: int = 0,
    sampler: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], Any]:
    """Train the d → 128 → r → 128 → d ReLU autoencoder for every r at once, then estimate λ̂."""
    G = len(bottlenecks)
    keys = rng.key([seed * 100003 + r for r in bottlenecks], device)
    data = TR.low_rank_autoencoder(keys, d, bottlenecks, n)
    mask = MR.size_mask(bottlenecks, device)
    p = MR.autoencoder_init(keys, d, max(bottlenecks))
    res = fit(
        lambda q, xb: MR.autoencoder_forward(q, xb, mask),
        p,
        data.x,
        data.y,
        MR.mse,
        keys,
        steps=train_steps,
        batch_size=min(100, n),
        optimizer="adam",
        lr=1e-3,
        log_every=max(1, train_steps // 50),
    )
    mk = mask.repeat_interleave(chains, 0)
    target = from_functional(
        MR.autoencoder_forward,
        MR.mse,
        repeat_replicas(res.params, chains),
        data.x.repeat_interleave(chains, 0),
        data.y.repeat_interleave(chains, 0),
        batch_size=n,
        per_replica=True,
        aux={"mask": mk},  # per-replica: sliced with the replicas when the sampler shards
    )
    kw = sampler or _sampler("autoencoder", n)
    est = estimate_llc(target, groups=G, chains=chains, seed=seed, diagnose=False, **kw)
    lam = _chains_per_group(est)
    final = res.losses[:, -1].tolist()
    rows = [
        {
            "d": d,
            "bottleneck": r,
            "llc": float(np.nanmean(lam[g])),
            "llc_std": float(np.nanstd(lam[g])),
            "train_loss": final[g],
        }
        for g, r in enumerate(bottlenecks)
    ]
    return rows, res


@register("llc-autoencoder", "Paper B: LLC of low-rank ReLU autoencoders vs bottleneck width")
def llc_autoencoder(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    small = scale == "small"
    d = 20 if small else 100
    bn = [1, 2, 4, 6, 8, 12, 16] if small else [1, 2, 4, 8, 16, 24, 32, 48, 64]
    chains, n, steps = (2, 1000, 3000) if small else (4, 5000, 20000)
    kw = _sampler("autoencoder", n)
    rows, res = autoencoder_llcs(d, bn, chains, n, steps, device, sampler=kw)
    fig, ax = new_figure(1, 2, width=9.0, row_height=3.6)
    slope, icpt, r2 = plot_linear_fit(
        ax[0, 0],
        bn,
        [r["llc"] for r in rows],
        color=PALETTE[0],
        label="SGLD λ̂",
        yerr=[r["llc_std"] for r in rows],
    )
    ax[0, 0].set(xlabel="bottleneck r", ylabel="LLC", title=_describe(kw, chains))
    ax[0, 0].title.set_fontsize(7)
    ax[0, 0].legend()
    curve = res.losses.cpu().numpy()
    for g, r in enumerate(bn):
        ax[0, 1].plot(res.steps, curve[g], color=PALETTE[g % len(PALETTE)], label=f"r = {r}")
    ax[0, 1].set(
        yscale="log",
        xlabel="Adam step",
        ylabel="train MSE",
        title=f"training, x = Az, d = {d}, N = {n}",
    )
    ax[0, 1].legend(fontsize=6)
    summary = [{"d": d, "slope": slope, "intercept": icpt, "r2": r2}]
    notes = [
        f"λ̂ vs r: slope {slope:.3g}, intercept {icpt:.3g}, R² = {r2:.3f} "
        "(paper B: linear, R² 0.998).",
        "No closed form exists for this model; only the linearity in r is comparable. The"
        " networks are not at exact minima (train MSE still falling, higher for larger r), and at"
        " ε = 1e-5 over 2000 steps stationarity of λ̂ is not checked here.",
    ]
    return finish(
        "llc-autoencoder",
        scale,
        root,
        {"llc_autoencoder": fig},
        {"llc_autoencoder": rows},
        summary,
        notes,
        "λ̂ of trained ReLU autoencoders on rank-r Gaussian data x = Az.",
    )


# ---------------------------------------------------------------------------------------------
# Arrhenius-style tests.


def _arrhenius_figure(df: np.ndarray, r: np.ndarray, title: str) -> tuple[Any, Any]:
    """Scatter ΔF vs log r with the least-squares line, R² and bootstrap slope interval."""
    fig, ax = new_figure(width=6.0, row_height=3.8)
    a = ax[0, 0]
    fitres = None
    if len(df) >= 3 and np.ptp(np.log(r)) > 0:
        fitres = FE.arrhenius_fit(df, r)
        plot_linear_fit(
            a,
            np.log(r),
            df,
            color=PALETTE[0],
            label=f"runs (n={len(df)}), 95% CI [{fitres.slope_ci[0]:.3g}, "
            f"{fitres.slope_ci[1]:.3g}]",
        )
    else:
        a.plot(np.log(r), df, "o", color=PALETTE[0], label=f"runs (n={len(df)}): too few to fit")
    a.set(xlabel="log r (time to transition)", ylabel="ΔF", title=title)
    a.title.set_fontsize(7)
    a.legend(fontsize=7)
    return fig, fitres


def _fit_notes(fitres: Any, paper: str) -> list[str]:
    if fitres is None:
        return ["Too few transitions to fit ΔF against log r.", paper]
    sign = "negative" if fitres.slope < 0 else "positive"
    ci0 = fitres.slope_ci[0] < 0 < fitres.slope_ci[1]
    return [
        f"ΔF ≈ {fitres.slope:.3g}·log r + {fitres.intercept:.3g}, R² = {fitres.r2:.3f}, "
        f"95% bootstrap slope interval [{fitres.slope_ci[0]:.3g}, {fitres.slope_ci[1]:.3g}] "
        f"over {fitres.n} runs: slope {sign}" + (", interval covers 0." if ci0 else "."),
        paper,
    ]


def grokking_config(small: bool, seeds: int) -> Any:
    """Many seeds as one replica-batched run: paper scale is the peers' grokking MLP (p = 53,
    cross-entropy); small scale is the default quadratic net (p = 23, centred MSE), which groks
    on a CPU in seconds (the MLP/cross-entropy recipes tried here did not grok within minutes)."""
    from grokbasin.config import build_config

    if small:
        ov: dict[str, Any] = {"train.epochs": 3000, "train.checkpoint_every": 50}
    else:
        ov = {
            "task.p": 53,
            "task.frac": 0.3,
            "model.name": "mlp",
            "model.embed_dim": 128,
            "model.width": 512,
            "train.loss": "cross_entropy",
            "train.optimizer": "adamw",
            "train.lr": 1e-3,
            "train.weight_decay": 1.0,
            "train.batch_size": 128,
            "train.epochs": 5000,
            "train.checkpoint_every": 20,
        }
    return build_config({}, ov | {"train.seeds": list(range(seeds))})


@register("arrhenius-grokking", "Paper B: ΔF vs log time-to-grok over many seeds of the MLP")
def arrhenius_grokking(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    from grokbasin.store.rundir import read_parquet
    from grokbasin.train.runner import train

    small = scale == "small"
    cfg = grokking_config(small, 16 if small else 500).model_copy(update={"device": device})
    run = train(cfg, root, progress=progress).run
    m = read_parquet(run.metrics).to_pylist()
    by: dict[int, list[dict[str, Any]]] = {}
    for row in m:
        by.setdefault(int(row["replica"]), []).append(row)
    grokked = []
    for rep, rows in sorted(by.items()):
        rows.sort(key=lambda q: q["epoch"])
        t = FE.grokking_times(
            np.array([q["epoch"] for q in rows]),
            np.array([q["train_acc"] for q in rows]),
            np.array([q["val_acc"] for q in rows]),
        )
        if t is not None and t[1] > t[0]:
            loss = {q["epoch"]: q["train_loss"] for q in rows}
            grokked.append((rep, t[0], t[1], loss[t[0]], loss[t[1]]))
    eps, gamma, steps = SAMPLERS["grokking"]
    chains, burn, bs = 3, 100, cfg.train.batch_size
    table: list[dict[str, Any]] = []
    if grokked:
        params: dict[str, list[torch.Tensor]] = {}
        reps = []
        for rep, i, j, _, _ in grokked:
            for e in (i, j):
                ck = run.load_checkpoint(e, device)
                for k, v in ck.items():
                    params.setdefault(k, []).append(v[rep])
                reps.append(rep)
        p0 = repeat_replicas({k: torch.stack(v) for k, v in params.items()}, chains)
        rows = modular_train_rows(cfg).to(device)[torch.tensor(reps, device=device)]
        target = from_modular(cfg, p0, rows.repeat_interleave(chains, 0), batch_size=bs)
        est = estimate_llc(
            target,
            groups=len(reps),
            chains=chains,
            nbetas=[2.0],
            step_size=eps,
            gamma=gamma,
            burnin=burn,
            draws=steps - burn,
            diagnose=False,
        )
        lam = np.nanmean(_chains_per_group(est), axis=1).reshape(-1, 2)
        n = cfg.task.n_train
        for (rep, i, j, li, lj), (a, b) in zip(grokked, lam, strict=True):
            table.append(
                {
                    "replica": rep,
                    "t_train_acc_1": i,
                    "t_val_acc_095": j,
                    "r": j - i,
                    "llc_i": a,
                    "llc_j": b,
                    "loss_i": li,
                    "loss_j": lj,
                    "delta_F": float(FE.delta_free_energy(a, b, li, lj, n)),
                }
            )
    df = np.array([t["delta_F"] for t in table])
    r = np.array([t["r"] for t in table], float)
    kw = {"step_size": eps, "gamma": gamma, "burnin": burn, "draws": steps - burn, "nbetas": [2.0]}
    title = (
        f"grokking {cfg.model.name} p={cfg.task.p}, {len(table)}/{len(by)} grokked\n"
        f"{_describe(kw, chains, 'batch ' + str(bs))}"
    )
    fig, fitres = _arrhenius_figure(df, r, title)
    summary = [
        {"runs": len(by), "grokked": len(table)}
        | (
            {}
            if fitres is None
            else {
                "slope": fitres.slope,
                "r2": fitres.r2,
                "slope_lo": fitres.slope_ci[0],
                "slope_hi": fitres.slope_ci[1],
            }
        )
    ]
    notes = _fit_notes(fitres, "Paper B: 168 of 500 runs grokked; slope negative with low R².")
    return finish(
        "arrhenius-grokking",
        scale,
        root,
        {"arrhenius_grokking": fig},
        {"arrhenius_grokking": table},
        summary,
        notes,
        "i = first checkpoint with train acc 1, j = first with val acc ≥ 0.95, "
        "r = j − i; ΔF = (λ̂_j − λ̂_i)·log N + N·(L_j − L_i).",
    )


def tms_runs(
    seeds: int,
    steps: int,
    log_every: int,
    ckpt_every: int,
    device: str = "cpu",
    n_features: int = 8,
    n_hidden: int = 2,
    n: int = 1000,
) -> tuple[Any, Any, Any]:
    """Paper B's TMS training (SGD lr 0.01, momentum 0.9, batch 100) for many seeds at once."""
    keys = rng.key(list(range(seeds)), device)
    data = TR.tms_one_hot(keys, n_features, n)
    res = fit(
        TMS.forward,
        TMS.init(keys, n_features, n_hidden),
        data.x,
        data.y,
        tms_loss,
        keys,
        steps=steps,
        batch_size=100,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        log_every=log_every,
        checkpoint_every=ckpt_every,
    )
    return keys, data, res


def tms_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features, mean over samples (Elhage et al., unit importance)."""
    return (pred - target).square().sum(-1).mean(-1)


@register("arrhenius-tms", "Paper B: ΔF vs log time between loss-curve transitions in TMS runs")
def arrhenius_tms(
    scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
) -> ExperimentResult:
    small = scale == "small"
    seeds, steps = (48, 6000) if small else (500, 30000)
    log_every, ckpt_every, n = 20, 100, 1000
    _, data, res = tms_runs(seeds, steps, log_every, ckpt_every, device, n=n)
    curves = res.losses.cpu().numpy()
    steps_arr = np.array(res.steps)
    pairs: list[tuple[int, int, int]] = []
    found = {}
    for rep in range(seeds):
        tr = FE.detect_transitions(curves[rep], window=9)
        found[rep] = tr
        for a, b in FE.transition_pairs(steps_arr, tr):
            ca, cb = (min(res.checkpoints, key=lambda s, t=t: abs(s - t)) for t in (a, b))
            if cb > ca:
                pairs.append((rep, ca, cb))
    eps, gamma, total = SAMPLERS["tms"]
    chains, burn, nb = 2, 100, 100 / math.log(100)  # devinterp's default nβ = B/ln B, B = 100
    table: list[dict[str, Any]] = []
    if pairs:
        groups = sorted({(rep, c) for rep, a, b in pairs for c in (a, b)})
        p0 = {k: torch.stack([res.checkpoints[c][k][rep] for rep, c in groups]) for k in res.params}
        gx = torch.stack([data.x[rep] for rep, _ in groups])
        target = from_functional(
            TMS.forward,
            tms_loss,
            repeat_replicas(p0, chains),
            gx.repeat_interleave(chains, 0),
            gx.repeat_interleave(chains, 0),
            batch_size=100,
            per_replica=True,
        )
        est = estimate_llc(
            target,
            groups=len(groups),
            chains=chains,
            nbetas=[nb],
            step_size=eps,
            gamma=gamma,
            burnin=burn,
            draws=total - burn,
            diagnose=False,
        )
        lam = dict(zip(groups, np.nanmean(_chains_per_group(est), axis=1).tolist(), strict=True))
        with torch.no_grad():
            full = tms_loss(TMS.forward(p0, gx), gx).tolist()
        loss = dict(zip(groups, full, strict=True))
        for rep, a, b in pairs:
            la, lb, fa, fb = lam[(rep, a)], lam[(rep, b)], loss[(rep, a)], loss[(rep, b)]
            table.append(
                {
                    "replica": rep,
                    "step_a": a,
                    "step_b": b,
                    "r": b - a,
                    "llc_a": la,
                    "llc_b": lb,
                    "loss_a": fa,
                    "loss_b": fb,
                    "delta_F": float(FE.delta_free_energy(la, lb, fa, fb, n)),
                }
            )
    df = np.array([t["delta_F"] for t in table])
    r = np.array([t["r"] for t in table], float)
    kw = {"step_size": eps, "gamma": gamma, "burnin": burn, "draws": total - burn, "nbetas": [nb]}
    fig, fitres = _arrhenius_figure(
        df,
        r,
        f"TMS 8→2, {seeds} runs, {len(table)} transition "
        f"pairs\n{_describe(kw, chains, 'batch 100')}",
    )
    fig2, ax = new_figure(width=6.4, row_height=3.6)
    for i, rep in enumerate(range(min(6, seeds))):
        col = PALETTE[i % len(PALETTE)]
        ax[0, 0].plot(steps_arr, curves[rep], color=col, lw=1)
        for t in found[rep]:
            ax[0, 0].axvline(steps_arr[t.at], color=col, ls=":", lw=0.8)
    for k in range(2, 9):
        ax[0, 0].axhline(TH.tms_kgon_loss(8, k), color="#999999", lw=0.6, ls="--")
    ax[0, 0].set(
        xlabel="SGD step",
        ylabel="train loss",
        title="TMS loss curves of 6 runs (dotted: detected transitions;\n"
        "dashed: k-gon losses (n−k)(n−1)/n², k = 2..8)",
    )
    ax[0, 0].title.set_fontsize(7)
    summary = [
        {"runs": seeds, "pairs": len(table)}
        | (
            {}
            if fitres is None
            else {
                "slope": fitres.slope,
                "r2": fitres.r2,
                "slope_lo": fitres.slope_ci[0],
                "slope_hi": fitres.slope_ci[1],
            }
        )
    ]
    notes = _fit_notes(fitres, "Paper B: TMS inconclusive (slightly positive slope).")
    return finish(
        "arrhenius-tms",
        scale,
        root,
        {"arrhenius_tms": fig, "tms_curves": fig2},
        {"arrhenius_tms": table},
        summary,
        notes,
        "Transitions: fast drops of the smoothed loss ≥ 10% of its total decrease; r ="
        " steps between consecutive transitions, ΔF between the checkpoints after them.",
    )

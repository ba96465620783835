"""``basin-selection`` (issue 19 item 4): λ̂ of the memorising (lazy) basin vs the generalising one.

Paper A's title claim (v3 abstract, §5): the memorising basin has the higher LLC, (p/2)·min(l, K)
(Thm 5.2, Cor 5.3), the generalising one the lower, K_eff(3p − 1)/2 (Thm 5.5). This experiment
builds both at the same (p, K, split, init): the generalising point is the trained run's solution
checkpoint, the lazy point keeps W at that run's initialisation and fits V by centred ridge
(``theory.basins.lazy_basin``). Extra lazy-only points at a small p cover K below and above 2p − 1.
Every basin is sampled under each named sampler, once over all of (W, V) (what the paper's
estimator does) and once over V only (Thm 5.2's restricted model), beside the localised Laplace
prediction and the closed forms.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from grokbasin.experiments import common
from grokbasin.experiments.experiment import Context, Experiment, Grid, Output
from grokbasin.report.figures import PALETTE, new_figure
from grokbasin.theory import basins
from grokbasin.theory import closed_form as cf

METHOD = (
    "Generalising basin: the trained run's solution checkpoint. Memorising basin: the same run's "
    "initial W with V the centred ridge solution on its training split (η = eta_rel·tr(F̃ᵀF̃)/K). "
    "Each basin × sampler × restriction (all of W, V | V only) is sampled in one batched call per "
    "(p, K, restriction); λ_Lap is the localised Laplace prediction at the sampler's (nβ, γ) "
    "(exact, or stochastic Lanczos quadrature when N·o > 8000). K_eff uses τ = rel_tau·max‖V[:,j]‖."
)

_LAZY_SMALL_P = [
    {"p": 11, "width": 12},  # K < 2p − 1 = 21
    {"p": 11, "width": 32},  # 2p − 1 < K < N − 1 = 47: no interpolation
    {"p": 11, "width": 128},  # K > N − 1: interpolates
]

KEYS = ("lazy_only", "eta_rel", "rel_tau")

GRIDS: dict[str, Grid] = {
    "small": {
        "base": {
            "task": {"p": 23, "frac": 0.4, "data_seed": 0},
            "model": {"width": 256},
            "train": common.train_small(4000, 100),
        },
        "seeds": [0],
        "samplers": {
            "paper": {**common.SAMPLER_PAPER},
            "calibrated": {**common.SAMPLER_PAPER_CALIBRATED},
        },
        "lazy_only": _LAZY_SMALL_P,
        "eta_rel": basins.ETA_REL,
        "rel_tau": basins.REL_TAU,
        "device": "auto",
        "trim": "",
    },
    "paper": {
        "base": {
            "task": {"p": 53, "frac": 0.4, "data_seed": 0},
            "model": {"name": "quadratic", "width": 1024},
            # the paper-fig3 preset's training (authors' step units), so the run is shared
            "train": {**common.TRAIN_PAPER, "weight_decay": [1e-4]},
        },
        "seeds": [0],
        "samplers": {
            "paper": {**common.SAMPLER_PAPER},
            "calibrated": {**common.SAMPLER_PAPER_CALIBRATED},
        },
        "lazy_only": _LAZY_SMALL_P,
        "eta_rel": basins.ETA_REL,
        "rel_tau": basins.REL_TAU,
        "device": "cpu",
        "trim": "one seed (seed 0, the paper-fig3 configuration)",
    },
}


def laplace_at(
    params: dict[str, torch.Tensor],
    x_train: torch.Tensor,
    nbeta: float,
    gamma: float,
    v_only: bool = False,
    max_exact: int = 8000,
) -> dict[str, Any]:
    """λ_Lap(nβ, γ) and the numeric rank of the centred Jacobian at one point (params [1, ...]).

    ``v_only``: the V-block alone, whose spectrum is o copies of svd(F̃)²/N (exact, any size).
    Otherwise exact when N·o ≤ ``max_exact``, else SLQ with the deterministic rank bracket.
    """
    from grokbasin.llc import laplace as lp

    N, o = int(x_train.shape[0]), int(params["V"].shape[1])
    if v_only:
        F = basins.features(params["W"][:1], x_train)[0]
        Fc = F - F.mean(dim=0, keepdim=True)
        mu = torch.linalg.svdvals(Fc).pow(2).numpy() / N
        tol = float(mu.max()) * max(N * o, mu.size * o) * lp.F64_EPS
        mu = np.repeat(mu[mu > tol], o)
        lam = float(lp.laplace_llc(mu, nbeta, gamma))
        return {"lap": lam, "rank": int(mu.size), "rank_lo": mu.size, "rank_hi": mu.size,
                "lap_method": "exact (V block)"}  # fmt: skip
    if N * o <= max_exact:
        spec = lp.quadratic_spectrum(params, x_train)
        lam = float(lp.laplace_llc(spec, nbeta, gamma))
        return {"lap": lam, "rank": spec.rank, "rank_lo": spec.rank, "rank_hi": spec.rank,
                "lap_method": "exact"}  # fmt: skip
    nodes, w, _ = lp.quadratic_slq_nodes(params, x_train, 4, 24, 0)
    lam = float(lp.slq_laplace_llc(nodes, w, 1, nbeta, gamma)[0])
    P = sum(t[0].numel() for t in params.values())
    tol = float(nodes.max()) * max(N * o, P) * lp.F64_EPS
    q_lo, q_hi, _ = lp.slq_count(nodes, w, 1, tol)
    d_lo, d_hi = lp.quadratic_rank_bounds(params, x_train, tol)
    lo, hi = max(q_lo, d_lo), min(q_hi, d_hi)
    return {"lap": lam, "rank": 0.5 * (lo + hi), "rank_lo": lo, "rank_hi": hi,
            "lap_method": "slq (4 probes × 24 steps)"}  # fmt: skip


def sample_basins(
    cfg: Any,
    points: dict[str, dict[str, torch.Tensor]],
    samplers: dict[str, dict[str, Any]],
    names: list[str] | None,
    seed: int = 0,
) -> tuple[dict[tuple[str, str], dict[str, Any]], float]:
    """λ̂ per (basin, sampler) for basins sharing (p, K, split): one batched sampler call.

    Groups are basin × sampler, each with its own ε and γ per replica; nβ, chains, steps and
    batch must agree across the samplers. Returns rows keyed by (basin, sampler) and wall seconds.
    """
    from grokbasin.config import LLCConfig
    from grokbasin.llc.estimate import estimate_llc
    from grokbasin.llc.targets import from_modular, modular_train_rows

    lcs = {k: LLCConfig(**v) for k, v in samplers.items()}
    first = next(iter(lcs.values()))
    same = ("chains", "burnin", "draws", "batch_size", "nbeta")
    for lc in lcs.values():
        if any(getattr(lc, f) != getattr(first, f) for f in same):
            raise ValueError(f"samplers must share {same} to batch together")
    rows = modular_train_rows(cfg)[:1]
    n, C = rows.shape[1], first.chains
    groups = [(b, s) for b in points for s in lcs]
    p0 = {
        k: torch.cat([points[b][k][:1].repeat_interleave(C, 0) for b, _ in groups])
        for k in ("W", "V")
    }
    target = from_modular(
        cfg, p0, rows.repeat(len(groups) * C, 1), min(first.batch_size, n), names=names
    )
    eps = [lcs[s].step_size for _, s in groups for _ in range(C)]
    gam = [lcs[s].gamma for _, s in groups for _ in range(C)]
    t0 = time.perf_counter()
    est = estimate_llc(
        target,
        groups=len(groups),
        chains=C,
        nbetas=[first.resolve_nbeta(n)],
        step_size=eps,
        gamma=gam,
        burnin=first.burnin,
        draws=first.draws,
        seed=seed,
        group_ids=[[i] for i in range(len(groups))],
    )
    wall = time.perf_counter() - t0
    out = {}
    for g, key in enumerate(groups):
        diag = est.diagnostics[g] if est.diagnostics else {}
        out[key] = {
            "llc": float(est.llc_mean[g, 0]),
            "llc_std": float(est.llc_std[g, 0]),
            "flags": ",".join(diag.get("flags", [])),
            "nbeta": float(est.nbetas[0]),
            "init_loss": float(np.mean(est._gbc(est.result.init_loss)[g, 0])),
        }
    return out, wall


def _formulas(p: int, K: int, n_train: int, feat_rank: int) -> dict[str, float]:
    """The closed forms both basins are held against, with the data-aware ceiling."""
    lo, hi = cf.lazy_bounds_modular(p, K)
    return {
        "lazy_all_pairs": cf.lazy_llc(p, K, cf.modular_feature_dim(p)),
        "lazy_train": cf.lazy_llc(p, K, feat_rank) if feat_rank else math.nan,
        "cor53_lo": lo,
        "cor53_hi": hi,
        "thm42": cf.modular_llc_under(p, K),
        "data_cap": basins.data_cap(p, n_train),
    }


def basin_rows(
    cfg: Any,
    points: dict[str, dict[str, torch.Tensor]],
    samplers: dict[str, dict[str, Any]],
    info: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Rows basin × sampler × restriction with λ̂, λ_Lap, numeric rank and the formulas."""
    from grokbasin.train.loop import make_setup

    s = make_setup(cfg.model_copy(update={"device": "cpu"}))
    x_train = s.task.x[s.task.train_idx[0]]
    p, K, N = cfg.task.p, cfg.model.width, s.task.n_train
    out = []
    for restrict, names in (("W,V", None), ("V", ["V"])):
        est, wall = sample_basins(cfg, points, samplers, names)
        for (b, sname), r in est.items():
            lc = samplers[sname]
            one = {k: v[:1].double() for k, v in points[b].items()}
            lap = laplace_at(one, x_train, r["nbeta"], lc["gamma"], v_only=restrict == "V")
            out.append(
                {
                    "basin": b,
                    "p": p,
                    "width": K,
                    "n_train": N,
                    "sampler": sname,
                    "step_size": lc["step_size"],
                    "gamma": lc["gamma"],
                    "sampled": restrict,
                    **r,
                    **lap,
                    "rank_half": lap["rank"] / 2,
                    **info[b],
                    **_formulas(p, K, N, info[b].get("feature_rank_train", 0)),
                    "wall_s": wall,
                }
            )
    return out


def _cfg_for(grid: Grid, ctx: Context, p: int, width: int) -> Any:
    """A run config at (p, K) with the grid's task split and seed (lazy-only points)."""
    from grokbasin.config import build_config

    t = grid["base"]["task"]
    over = {"task.p": p, "task.frac": t["frac"], "task.data_seed": t.get("data_seed", 0),
            "model.width": width, "train.seeds": grid["seeds"][:1],
            "train.batch_size": 0}  # fmt: skip
    return build_config({}, over).model_copy(update={"device": common.device_for(grid, ctx)})


def _lazy_point(cfg: Any, eta_rel: float) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The lazy basin of ``cfg`` and what to report about it (accuracies, rank, residual, η)."""
    from grokbasin.train.loop import make_setup

    params, fit = basins.lazy_basin(cfg.model_copy(update={"device": "cpu"}), eta_rel)
    s = make_setup(cfg.model_copy(update={"device": "cpu"}))
    raw, cen = basins.split_accuracy(params, s.task), basins.split_accuracy(params, s.task, True)
    info = {
        "train_acc": raw["train_acc"][0],
        "val_acc": raw["val_acc"][0],
        "train_acc_offset": cen["train_acc"][0],
        "val_acc_offset": cen["val_acc"][0],
        "train_loss": float(fit.residual[0]),
        "eta": float(fit.eta[0]),
        "feature_rank_train": int(fit.feature_rank[0]),
        "k_eff": cfg.model.width,
    }
    return params, info


def compute(grid: Grid, ctx: Context) -> Output:
    """Train the generalising run, build its lazy twin and the lazy-only points, sample them all."""
    from grokbasin.store.rundir import RunDir
    from grokbasin.train.loop import evaluate, make_setup

    samplers = common.samplers(grid)
    (cfg,) = common.grid_configs(grid, ctx)
    common.run(ctx, [cfg], False)
    mrows = common.metrics_rows(cfg, ctx.root)
    epoch, ok = common.solution_epoch(mrows)
    run = RunDir(ctx.root / cfg.run_hash())
    gen = {k: v[:1].cpu() for k, v in run.load_checkpoint(epoch).items()}
    cpu = cfg.model_copy(update={"device": "cpu"})
    s = make_setup(cpu)
    ev = evaluate(s, gen)
    ke = basins.effective_width_rows(
        gen["V"], 2 * cfg.task.p, [epoch], rel_tau=grid["rel_tau"], n_train=s.task.n_train
    )[0]
    lazy, lazy_info = _lazy_point(cfg, grid["eta_rel"])
    info = {
        "generalising": {
            "epoch": epoch,
            "generalised": ok,
            "train_acc": float(ev["train_acc"][0]),
            "val_acc": float(ev["val_acc"][0]),
            "train_loss": float(ev["train_loss"][0]),
            "k_eff": ke["k_eff"],
            "llc_keff": ke["llc_keff"],
            "tau": ke["tau"],
        },
        "lazy": lazy_info,
    }
    rows = basin_rows(cfg, {"generalising": gen, "lazy": lazy}, samplers, info)
    for pt in grid.get("lazy_only", []):
        c2 = _cfg_for(grid, ctx, pt["p"], pt["width"])
        params, inf = _lazy_point(c2, grid["eta_rel"])
        rows += basin_rows(c2, {"lazy": params}, samplers, {"lazy": inf})
    for r in rows:
        r.setdefault("llc_keff", cf.effective_width_llc(r["k_eff"], 2 * r["p"], r["p"]))
    summary = ranking(rows)
    facts = {"p": cfg.task.p, "width": cfg.model.width, "epoch": epoch, "generalised": ok,
             "rel_tau": grid["rel_tau"], "eta_rel": grid["eta_rel"]}  # fmt: skip
    return Output({"basin-selection": rows}, summary, facts)


def ranking(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (p, K, sampler, restriction) with both basins: does λ̂ rank lazy above generalising?"""
    out = []
    keys = sorted({(r["p"], r["width"], r["sampler"], r["sampled"]) for r in rows})
    for p, K, s, restrict in keys:
        sel = {
            r["basin"]: r
            for r in rows
            if (r["p"], r["width"], r["sampler"], r["sampled"]) == (p, K, s, restrict)
        }
        if {"lazy", "generalising"} <= set(sel):
            lz, gn = sel["lazy"], sel["generalising"]
            out.append(
                {
                    "p": p,
                    "width": K,
                    "sampler": s,
                    "sampled": restrict,
                    "llc_lazy": lz["llc"],
                    "llc_generalising": gn["llc"],
                    "ratio": lz["llc"] / gn["llc"] if gn["llc"] else math.nan,
                    "lap_lazy": lz["lap"],
                    "lap_generalising": gn["lap"],
                    "lazy_higher": bool(lz["llc"] > gn["llc"]),
                    "formula_lazy": lz["lazy_train"],
                    "formula_generalising": min(gn["llc_keff"], gn["data_cap"]),
                }
            )
    return out


def plot(out: Output) -> dict[str, Any]:
    """λ̂ (filled) and λ_Lap (hollow) per basin and sampler beside each basin's closed form."""
    rows = [r for r in out.tables["basin-selection"] if r["sampled"] == "W,V"]
    f = out.facts
    main = [r for r in rows if (r["p"], r["width"]) == (f["p"], f["width"])]
    fig, axes = new_figure(1, 1, width=7.5, row_height=4.2)
    ax = axes[0, 0]
    labels = sorted({(r["basin"], r["sampler"]) for r in main})
    for i, (b, s) in enumerate(labels):
        r = next(x for x in main if (x["basin"], x["sampler"]) == (b, s))
        col = PALETTE[i % len(PALETTE)]
        ax.scatter([i], [r["llc"]], color=col, s=40, zorder=3, label=f"{b}, {s}: λ̂")
        ax.scatter([i], [r["lap"]], facecolors="none", edgecolors=col, s=60, zorder=3)
    gen = next((r for r in main if r["basin"] == "generalising"), None)
    lz = next((r for r in main if r["basin"] == "lazy"), None)
    if lz:
        ax.axhline(lz["lazy_train"], color="#444444", ls="--", lw=0.8,
                   label=f"lazy (p/2)·rank F̃ = {lz['lazy_train']:,.0f}")  # fmt: skip
        ax.axhline(lz["data_cap"], color="#999999", ls=":", lw=0.8,
                   label=f"data cap p(N−1)/2 = {lz['data_cap']:,.0f}")  # fmt: skip
    if gen:
        ax.axhline(gen["llc_keff"], color="#444444", ls="-.", lw=0.8,
                   label=f"K_eff(3p−1)/2 = {gen['llc_keff']:,.0f} "
                   f"(K_eff {gen['k_eff']})")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f"{b}\n{s}" for b, s in labels], fontsize=8)
    ax.set_ylabel("LLC (log scale)")
    ax.scatter([], [], facecolors="none", edgecolors="#777777", s=60, label="λ_Lap at (nβ, γ)")
    ax.legend(fontsize=7, loc="center right")
    ax.set_title(f"basin selection at p={f['p']}, K={f['width']} (all of W, V sampled)", fontsize=9)
    return {"basin-selection": fig}


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "basin-selection",
        "Paper A's basin-selection claim: λ̂ of the lazy (memorising) vs the generalising basin",
        GRIDS,
        compute,
        plot,
        METHOD,
        keys=frozenset(KEYS),
    ),
)

"""Step-size calibration: an ε × γ (× nβ) grid of SGLD settings sampled in ONE batched call.

Paper A App. B.2: estimates move by orders of magnitude with ε and γ, so settings must be chosen
per model. Every grid cell becomes a group of the estimator's replica layout (A1's
``estimate_llc`` with per-replica step sizes and localisations); all cells use the same chain
keys (common random numbers: equal noise and minibatches), so differences between cells come
from the settings, not from luck. Per cell: λ̂ mean/std across chains, the diagnostics flags
(``grokbasin.llc.diagnostics``) and the localised Laplace prediction λ_Lap (``llc.laplace``).

Recommendation, per nβ: among *healthy* cells — none of :data:`DISQUALIFYING` flags; ``low_ess``
is reported but only warns — take for each γ the largest healthy ε; of those, pick the cell whose
λ̂ is closest to λ_Lap (relative gap) when λ_Lap is known, else the largest ε (ties: smaller γ).
Outputs: RUN_DIR/calibration/calibration_e<epoch>_r<replica>_<hash>.parquet and .png.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.config import LLCConfig, short_hash
from grokbasin.errors import ConfigError, GrokbasinError
from grokbasin.store.rundir import RunDir, holds_run_locks, write_parquet

DISQUALIFYING = ("nonfinite", "explosion", "negative", "rhat", "nonstationary")


@dataclass
class Calibration:
    """Per-cell rows, the recommended cell per nβ, and where the table and figure went."""

    rows: list[dict[str, Any]]
    recommended: dict[float, dict[str, Any] | None]
    table: Path | None = None
    figure: Path | None = None
    laplace_method: str | None = None
    notes: list[str] = field(default_factory=list)


def grid_layout(step_sizes: Sequence[float], gammas: Sequence[float]) -> list[tuple[float, float]]:
    """The (ε, γ) cells in group order: ε-major."""
    return [(float(e), float(g)) for e, g in itertools.product(step_sizes, gammas)]


def per_replica(cells: list[tuple[float, float]], nbetas: int, chains: int) -> tuple[list, list]:
    """Step size and γ for each replica r = (g·B + b)·C + c of the estimator's layout."""
    copies = nbetas * chains
    eps = [e for e, _ in cells for _ in range(copies)]
    gam = [g for _, g in cells for _ in range(copies)]
    return eps, gam


def recommend(rows: list[dict[str, Any]]) -> dict[float, dict[str, Any] | None]:
    """The recommended cell per nβ (see the module docstring), None where no cell is healthy."""
    out: dict[float, dict[str, Any] | None] = {}
    for nb in dict.fromkeys(r["nbeta"] for r in rows):
        ok = [r for r in rows if r["nbeta"] == nb and r["healthy"]]
        best_per_gamma = {}
        for r in ok:
            cur = best_per_gamma.get(r["gamma"])
            if cur is None or r["step_size"] > cur["step_size"]:
                best_per_gamma[r["gamma"]] = r
        cands = list(best_per_gamma.values())
        if not cands:
            out[nb] = None
            continue
        with_lap = [r for r in cands if np.isfinite(r["laplace_gap"])]
        if with_lap:
            out[nb] = min(with_lap, key=lambda r: (abs(r["laplace_gap"]), -r["step_size"]))
        else:
            out[nb] = max(cands, key=lambda r: (r["step_size"], -r["gamma"]))
    return out


def _laplace_grid(
    run_dir: Path,
    epoch: int,
    replica: int,
    nbetas: list[float],
    gammas: list[float],
    device: str,
    mode: str,
) -> tuple[np.ndarray | None, str | None, str | None]:
    """λ_Lap [B, len(gammas)] for the checkpoint, or (None, None, why) when unavailable."""
    if mode == "off":
        return None, None, None
    from grokbasin.llc.laplace import laplace_for_checkpoint

    try:
        res = laplace_for_checkpoint(
            run_dir,
            epoch,
            replica,
            nbetas,
            gammas,
            method="auto" if mode == "auto" else mode,
            device=device,
        )
    except GrokbasinError as e:
        return None, None, f"no Laplace prediction: {e}"
    return res.values, res.method, None


@holds_run_locks("run_dir")
def calibrate(
    run_dir: str | Path,
    epoch: int | None,
    llc_cfg: LLCConfig,
    step_sizes: Sequence[float],
    gammas: Sequence[float],
    nbetas: Sequence[float] | None = None,
    device: str = "cpu",
    replica: int = 0,
    laplace: str = "auto",
    write: bool = True,
    progress: bool = False,
) -> Calibration:
    """Sample the ε × γ × nβ grid at one checkpoint in one batched call; table, figure, advice.

    ``epoch`` None means the last checkpoint; ``nbetas`` None means the config's nβ plus its sweep
    values; ``laplace`` is 'auto' | 'exact' | 'slq' | 'off'. Chains, burn-in, draws, thin, batch,
    weight decay, noise level, seed and baseline come from ``llc_cfg``.
    """
    from grokbasin.llc.targets import from_modular, modular_train_rows
    from grokbasin.llc.trajectory import (
        check_sampler_fits,
        nbeta_values,
        run_config,
        sample_with_progress,
    )
    from grokbasin.train.loop import hidden_size, params_per_replica

    eps_list, gam_list = [float(e) for e in step_sizes], [float(g) for g in gammas]
    if not eps_list or any(not e > 0 for e in eps_list):
        raise ConfigError(
            f"calibration step sizes must be a non-empty list of values > 0, got {eps_list}"
        )
    if not gam_list or any(g < 0 for g in gam_list):
        raise ConfigError(
            f"calibration gammas must be a non-empty list of values >= 0, got {gam_list}"
        )
    run = RunDir(run_dir)
    cfg = run_config(run)
    have = run.checkpoint_epochs()
    if not have:
        raise GrokbasinError(f"{run.path}: no checkpoints found")
    epoch = have[-1] if epoch is None else int(epoch)
    nb_want = len(nbetas) if nbetas else len(nbeta_values(llc_cfg, cfg.task.n_train))
    replicas = len(eps_list) * len(gam_list) * nb_want * llc_cfg.chains
    check_sampler_fits(
        replicas,
        params_per_replica(cfg),
        4 * min(llc_cfg.batch_size, cfg.task.n_train) * hidden_size(cfg),
        device,
        "calibration",
    )
    ck = run.load_checkpoint(epoch, device)
    rows_all = modular_train_rows(cfg)
    if not 0 <= replica < rows_all.shape[0]:
        raise ConfigError(
            f"replica {replica} out of range: the run has {rows_all.shape[0]} replicas"
        )
    n = rows_all.shape[1]
    nb_list = [float(v) for v in nbetas] if nbetas else nbeta_values(llc_cfg, n)
    cells = grid_layout(eps_list, gam_list)
    G, B, C = len(cells), len(nb_list), llc_cfg.chains
    copies = G * B * C
    params = {k: v[replica : replica + 1].repeat_interleave(copies, 0) for k, v in ck.items()}
    rows = rows_all[replica : replica + 1].repeat_interleave(copies, 0)
    target = from_modular(cfg, params, rows, min(llc_cfg.batch_size, n))
    eps_r, gam_r = per_replica(cells, B, C)
    label = f"calibration: {G} cells × {B} nβ × {C} chains"
    est = sample_with_progress(
        target, llc_cfg, G, nb_list, [[epoch, replica]] * G, label, progress, eps_r, gam_r
    )
    lap, lap_method, why = _laplace_grid(
        run.path, epoch, replica, nb_list, gam_list, device, laplace
    )
    table = cell_rows(est, cells, nb_list, lap, gam_list, epoch, replica)
    cal = Calibration(
        table, recommend(table), laplace_method=lap_method, notes=[why] if why else []
    )
    if write:
        tag = short_hash([llc_cfg.sampler_hash(), eps_list, gam_list, nb_list], 8)
        base = run.path / "calibration" / f"calibration_e{epoch}_r{replica}_{tag}"
        cal.table = base.with_suffix(".parquet")
        write_parquet(cal.table, [_parquet_row(r) for r in table])
        cal.figure = base.with_suffix(".png")
        heatmap(cal, cal.figure)
    return cal


def cell_rows(
    est: Any,
    cells: list[tuple[float, float]],
    nb_list: list[float],
    lap: np.ndarray | None,
    gam_list: list[float],
    epoch: int,
    replica: int,
) -> list[dict[str, Any]]:
    """One row per (ε, γ, nβ) cell from an Estimate laid out as cells × nβ × chains."""
    llc = est.llc  # [G, B, C]
    out = []
    for g, (eps, gam) in enumerate(cells):
        for b, nb in enumerate(nb_list):
            d = est.diagnostics[g * len(nb_list) + b] if est.diagnostics else {}
            chains = llc[g, b]
            finite = chains[np.isfinite(chains)]
            mean = float(finite.mean()) if finite.size else math.nan
            std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            flags = list(d.get("flags", []))
            lap_v = float(lap[b, gam_list.index(gam)]) if lap is not None else math.nan
            gap = mean / lap_v - 1.0 if np.isfinite(lap_v) and lap_v > 0 else math.nan
            out.append(
                {
                    "epoch": epoch,
                    "replica": replica,
                    "step_size": eps,
                    "gamma": gam,
                    "nbeta": float(nb),
                    "llc_mean": mean,
                    "llc_std": std,
                    "llc_chains": [float(v) for v in chains],
                    "rhat": float(d.get("rhat", math.nan)),
                    "ess": float(d.get("ess", math.nan)),
                    "trend": float(d.get("trend", math.nan)),
                    "flags": flags,
                    "healthy": not any(f in DISQUALIFYING for f in flags) and finite.size > 0,
                    "laplace": lap_v,
                    "laplace_gap": gap,
                }
            )
    return out


def _parquet_row(r: dict[str, Any]) -> dict[str, Any]:
    """Parquet-friendly row: flags as one comma-separated string."""
    return {**r, "flags": ",".join(r["flags"])}


def heatmap(cal: Calibration, path: Path) -> None:
    """One panel per nβ: ε (rows) × γ (columns), colour log10 λ̂, text λ̂ / λ_Lap and flags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cal.rows
    nbs = list(dict.fromkeys(r["nbeta"] for r in rows))
    eps = sorted({r["step_size"] for r in rows})
    gams = sorted({r["gamma"] for r in rows})
    fig, axes = plt.subplots(
        1, len(nbs), figsize=(1.6 + 1.5 * len(gams) * len(nbs), 1.2 + 0.7 * len(eps)), squeeze=False
    )
    for ax, nb in zip(axes[0], nbs, strict=True):
        grid = np.full((len(eps), len(gams)), np.nan)
        cell = {(r["step_size"], r["gamma"]): r for r in rows if r["nbeta"] == nb}
        for (e, g), r in cell.items():
            v = r["llc_mean"]
            grid[eps.index(e), gams.index(g)] = math.log10(v) if v > 0 else np.nan
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        best = cal.recommended.get(nb)
        for (e, g), r in cell.items():
            i, j = eps.index(e), gams.index(g)
            text = f"{r['llc_mean']:.3g}"
            if np.isfinite(r["laplace"]):
                text += f"\nLap {r['laplace']:.3g}"
            bad = [f for f in r["flags"] if f in DISQUALIFYING]
            if bad:
                text += "\n" + ",".join(bad)
            ax.text(
                j, i, text, ha="center", va="center", fontsize=7, color="white" if bad else "black"
            )
            if best is not None and best["step_size"] == e and best["gamma"] == g:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="red"))
        ax.set_xticks(range(len(gams)), [f"{g:g}" for g in gams])
        ax.set_yticks(range(len(eps)), [f"{e:g}" for e in eps])
        ax.set_xlabel("γ (localisation)")
        ax.set_ylabel("ε (step size)")
        ax.set_title(f"λ̂ mean, nβ = {nb:.4g} (red: recommended)", fontsize=9)
        fig.colorbar(im, ax=ax, label="log10 λ̂")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def format_recommendation(cal: Calibration) -> list[str]:
    """Human-readable lines for the CLI: the advice per nβ and any notes."""
    lines = []
    for nb, r in cal.recommended.items():
        if r is None:
            lines.append(f"nβ={nb:.4g}: no healthy cell; try smaller step sizes or longer burn-in")
            continue
        lap = (
            f", λ_Lap {r['laplace']:.4g} (gap {100 * r['laplace_gap']:+.0f}%)"
            if np.isfinite(r["laplace"])
            else ""
        )
        warn = " [low ESS: lengthen chains]" if "low_ess" in r["flags"] else ""
        lines.append(
            f"nβ={nb:.4g}: recommend ε={r['step_size']:g}, γ={r['gamma']:g} "
            f"(λ̂ {r['llc_mean']:.4g} ± {r['llc_std']:.2g}{lap}){warn}"
        )
    return lines + cal.notes


__all__ = [
    "DISQUALIFYING",
    "Calibration",
    "calibrate",
    "cell_rows",
    "format_recommendation",
    "grid_layout",
    "heatmap",
    "per_replica",
    "recommend",
]

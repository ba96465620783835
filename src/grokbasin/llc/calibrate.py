"""Step-size calibration: an ε × γ (× nβ) grid of SGLD settings sampled in ONE batched call.

Paper A App. B.2: estimates move by orders of magnitude with ε and γ, so settings must be chosen
per model. Every grid cell becomes a group of the estimator's replica layout (A1's
``estimate_llc`` with per-replica step sizes and localisations); all cells use the same chain
keys (common random numbers: equal noise and minibatches), so differences between cells come
from the settings, not from luck. Per cell: λ̂ mean/std across chains, the diagnostics flags
(``grokbasin.llc.diagnostics``) and the localised Laplace prediction λ_Lap (``llc.laplace``).

Optional axes and criteria (off by default; then rows, choice and file names are as before):

- ``samplers``: the sampler is a grid axis. Kernels differ between samplers, so each sampler's
  sub-grid is ONE batched call (a loop over at most len(METHODS) samplers, none over cells).
  Rows gain a ``sampler`` column; sampler-specific options of ``llc.options`` go to their sampler.
- ``epochs``: several checkpoints; every cell × checkpoint is one group of the same call (common
  random numbers per checkpoint). Ordering check: the *consensus order* of the checkpoints is the
  Borda order (mean rank of each checkpoint's λ̂) over cells healthy at every checkpoint; a cell
  keeps the order when Kendall's τ_b of its per-checkpoint λ̂ with the consensus is ≥ ``order_min``
  (default 0.5: at most a quarter of the checkpoint pairs swapped). Two checkpoints whose λ̂
  differ by less than ``TIE_Z`` = 2 combined standard errors (over chains) count as tied, so a
  swap within noise is no flip. Rank-based, so it does not care that λ̂'s scale moves by orders
  of magnitude across the grid. Column ``order_tau``.
- ``mala_target``: MALA acceptance (SGLD's discretisation error, devinterp 2.0's diagnostic) is
  recorded per cell (column ``mala_accept``, mean over chains and steps; the least over the
  cell's checkpoints is used) and a cell below the target is not recommended. Hitchcock &
  Hoogland (2025) / devinterp suggest ε whose acceptance is around 0.9–0.95. Acceptance is
  defined for plain SGLD only: other samplers' cells show NaN and are not judged on it.

Recommendation, per nβ: a cell *passes* when it is healthy at every checkpoint — none of
:data:`DISQUALIFYING` flags; ``low_ess`` is reported but only warns — reaches the MALA target
(when set) and keeps the checkpoint order (when there are several checkpoints). For each
(sampler, γ) take the largest passing ε; of those, pick the cell whose λ̂ is closest to λ_Lap
(mean relative gap over checkpoints) when λ_Lap is known, else per sampler the largest ε (ties:
smaller γ) and, across samplers, the smallest relative spread of λ̂ across chains (stability).
:func:`explain` says in one line which criteria the winner passed and what the others failed.
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

from grokbasin import sampler_registry
from grokbasin.config import LLCConfig, short_hash
from grokbasin.errors import ConfigError, GrokbasinError
from grokbasin.llc.calibration_choice import (
    DISQUALIFYING,
    ORDER_MIN,
    cell_key,
    consensus_order,
    explain,
    failures,
    group_cells,
    kendall_tau,
    order_check,
    recommend,
)
from grokbasin.store.rundir import RunDir, holds_run_locks, write_parquet


@dataclass
class Calibration:
    """Per-cell rows, the recommended cell per nβ, and where the table and figure went."""

    rows: list[dict[str, Any]]
    recommended: dict[float, dict[str, Any] | None]
    table: Path | None = None
    figure: Path | None = None
    laplace_method: str | None = None
    notes: list[str] = field(default_factory=list)
    reasons: dict[float, str] = field(default_factory=dict)  # why each nβ's cell won (explain)
    mala_target: float | None = None
    order_min: float = ORDER_MIN


def grid_layout(step_sizes: Sequence[float], gammas: Sequence[float]) -> list[tuple[float, float]]:
    """The (ε, γ) cells in group order: ε-major."""
    return [(float(e), float(g)) for e, g in itertools.product(step_sizes, gammas)]


def per_replica(cells: list[tuple[float, float]], nbetas: int, chains: int) -> tuple[list, list]:
    """Step size and γ for each replica r = (g·B + b)·C + c of the estimator's layout."""
    copies = nbetas * chains
    eps = [e for e, _ in cells for _ in range(copies)]
    gam = [g for _, g in cells for _ in range(copies)]
    return eps, gam


def check_samplers(names: Sequence[str]) -> list[str]:
    """The sampler axis, de-duplicated; ConfigError in one line naming the registry's choices."""
    out = list(dict.fromkeys(str(n).strip() for n in names))
    bad = [n for n in out if n not in sampler_registry.SAMPLERS]
    choices = ", ".join(sampler_registry.METHODS)
    if not out:
        raise ConfigError(f"samplers: give at least one of {choices}")
    if bad:
        raise ConfigError(f"samplers: unknown sampler {bad[0]!r}; choose from {choices}")
    return out


def check_fraction(name: str, value: float | None) -> float | None:
    """``value`` as a float in [0, 1] (None passes); ConfigError in one line otherwise."""
    if value is None:
        return None
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    return v


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
    *,
    samplers: Sequence[str] | None = None,
    epochs: Sequence[int] | None = None,
    mala_target: float | None = None,
    order_min: float = ORDER_MIN,
) -> Calibration:
    """Sample the ε × γ × nβ grid at one checkpoint in one batched call; table, figure, advice.

    ``epoch`` None means the last checkpoint; ``nbetas`` None means the config's nβ plus its sweep
    values; ``laplace`` is 'auto' | 'exact' | 'slq' | 'off'. Chains, burn-in, draws, thin, batch,
    weight decay, noise level, seed and baseline come from ``llc_cfg``. ``samplers`` (a grid
    axis: one batched call per sampler), ``epochs`` (several checkpoints instead of ``epoch``:
    the ordering check) and ``mala_target`` (in [0, 1]) are described in the module docstring.
    """
    from grokbasin.llc.samplers import MALA_METHODS
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
    sampler_axis = check_samplers(samplers) if samplers is not None else None
    mala_target = check_fraction("mala_target (--mala-target)", mala_target)
    order_min = float(order_min)
    if not -1.0 <= order_min <= 1.0:
        raise ConfigError(f"order_min (a Kendall τ) must be in [-1, 1], got {order_min!r}")
    run = RunDir(run_dir)
    cfg = run_config(run)
    have = run.checkpoint_epochs()
    if not have:
        raise GrokbasinError(f"{run.path}: no checkpoints found")
    if epochs is not None and epoch is not None:
        raise ConfigError("epochs: give one checkpoint (--epoch) or several (--epochs), not both")
    ep_list = sorted({int(e) for e in epochs}) if epochs is not None else None
    if ep_list is not None and len(ep_list) < 2:
        raise ConfigError(f"epochs: the ordering check needs >= 2 checkpoints, got {ep_list}")
    missing = [e for e in ep_list or [] if e not in have]
    if missing:
        raise ConfigError(f"epochs: no checkpoint for {missing[0]}; have {have}")
    if ep_list is None:
        ep_list = [have[-1] if epoch is None else int(epoch)]
    epoch = ep_list[-1]
    nb_want = len(nbetas) if nbetas else len(nbeta_values(llc_cfg, cfg.task.n_train))
    K = len(ep_list)
    replicas = len(eps_list) * len(gam_list) * K * nb_want * llc_cfg.chains
    check_sampler_fits(
        replicas,
        params_per_replica(cfg),
        4 * min(llc_cfg.batch_size, cfg.task.n_train) * hidden_size(cfg),
        device,
        "calibration",
    )
    cks = [run.load_checkpoint(e, device) for e in ep_list]  # file reads, not sampling
    rows_all = modular_train_rows(cfg)
    if not 0 <= replica < rows_all.shape[0]:
        raise ConfigError(
            f"replica {replica} out of range: the run has {rows_all.shape[0]} replicas"
        )
    n = rows_all.shape[1]
    nb_list = [float(v) for v in nbetas] if nbetas else nbeta_values(llc_cfg, n)
    cells = grid_layout(eps_list, gam_list)
    G, B, C = len(cells), len(nb_list), llc_cfg.chains
    copies = G * K * B * C
    # replica r = ((cell·K + checkpoint)·B + b)·C + c: checkpoints inside cells
    per_ck = {k: torch_cat([ck[k][replica : replica + 1] for ck in cks]) for k in cks[0]}
    params = {
        k: v.repeat_interleave(B * C, 0).repeat(G, *[1] * (v.dim() - 1)) for k, v in per_ck.items()
    }
    rows = rows_all[replica : replica + 1].repeat_interleave(copies, 0)
    masks = restriction_masks(cfg, llc_cfg)
    if masks is not None:  # λ_Lap is the whole model's: no prediction for a restriction
        laplace = "off"
    target = from_modular(cfg, params, rows, min(llc_cfg.batch_size, n), masks=masks)
    eps_r, gam_r = per_replica(cells, K * B, C)
    ids = [[e, replica] for _ in cells for e in ep_list]
    lap, lap_method, why = _laplace_epochs(
        run.path, ep_list, replica, nb_list, gam_list, device, laplace
    )
    table = []
    for method in sampler_axis or [llc_cfg.method]:  # kernels differ: one batched call each
        s_cfg = llc_cfg if sampler_axis is None else _for_sampler(llc_cfg, method)
        mala = mala_target is not None and method in MALA_METHODS
        label = f"calibration: {G} cells × {B} nβ × {C} chains"
        label = label.replace(" cells ×", f" cells × {K} checkpoints ×") if K > 1 else label
        est = sample_with_progress(
            target,
            s_cfg,
            G * K,
            nb_list,
            ids,
            f"{label} ({method})" if sampler_axis else label,
            progress,
            eps_r,
            gam_r,
            mala=mala,
        )
        table += cell_rows(
            est,
            cells,
            nb_list,
            lap,
            gam_list,
            epoch,
            replica,
            sampler=method if sampler_axis else None,
            epochs=ep_list if K > 1 else None,
            mala=mala_target is not None,
        )
    if K > 1:
        order_check(table)
    notes = [why] if why else []
    if masks is not None:
        name, pats = next(iter(llc_cfg.restrict.items()))
        notes.append(
            f"chains restricted to {name} ({', '.join(pats)}); no Laplace prediction for a "
            "restriction"
        )
    no_mala = [m for m in sampler_axis or [llc_cfg.method] if m not in MALA_METHODS]
    if mala_target is not None and no_mala:
        notes.append(
            f"MALA acceptance is defined for plain SGLD only: {', '.join(no_mala)} cells are "
            "not judged on the MALA target"
        )
    cal = Calibration(
        table,
        recommend(table, mala_target, order_min),
        laplace_method=lap_method,
        notes=notes,
        reasons=explain(table, mala_target, order_min),
        mala_target=mala_target,
        order_min=order_min,
    )
    if write:
        key: list[Any] = [llc_cfg.sampler_hash(), eps_list, gam_list, nb_list]
        extra = {"samplers": sampler_axis, "mala_target": mala_target}
        extra |= {"restrict": dict(llc_cfg.restrict)} if llc_cfg.restrict else {}
        if K > 1:
            extra |= {"epochs": ep_list, "order_min": order_min}
        if any(v is not None for v in extra.values()):
            key.append(extra)  # absent for a plain grid: its file names are unchanged
        tag = short_hash(key, 8)
        first = f"{ep_list[0]}-" if K > 1 else ""
        base = run.path / "calibration" / f"calibration_e{first}{epoch}_r{replica}_{tag}"
        cal.table = base.with_suffix(".parquet")
        write_parquet(cal.table, [_parquet_row(r) for r in table])
        cal.figure = base.with_suffix(".png")
        heatmap(cal, cal.figure)
    return cal


def restriction_masks(cfg: Any, llc_cfg: LLCConfig) -> dict[str, Any] | None:
    """The parameter masks of the one restriction being calibrated (``llc.restrict``; None when
    unrestricted): a restricted chain's step size is calibrated with its own restriction."""
    if not llc_cfg.restrict:
        return None
    if len(llc_cfg.restrict) > 1:
        raise ConfigError(
            f"restrict: calibrate one restriction at a time, got {len(llc_cfg.restrict)} "
            f"({', '.join(llc_cfg.restrict)})"
        )
    from grokbasin.llc.trajectory import run_masks

    return next(iter(run_masks(cfg, llc_cfg).values()))


def torch_cat(parts: list[Any]) -> Any:
    """``torch.cat`` along the replica axis (torch imported only when sampling)."""
    import torch

    return torch.cat(parts)


def _for_sampler(llc_cfg: LLCConfig, method: str) -> LLCConfig:
    """``llc_cfg`` with ``method`` as its sampler, keeping only the options that are its own."""
    own = sampler_registry.spec(method).options
    opts = {k: v for k, v in llc_cfg.options.items() if k in own}
    return llc_cfg.model_copy(update={"method": method, "options": opts})


def _laplace_epochs(
    run_dir: Path,
    epochs: list[int],
    replica: int,
    nbetas: list[float],
    gammas: list[float],
    device: str,
    mode: str,
) -> tuple[np.ndarray | None, str | None, str | None]:
    """λ_Lap [B, Γ] at one checkpoint, [K, B, Γ] at several (one exact/SLQ solve per checkpoint,
    outside the sampler), or (None, None, why)."""
    if len(epochs) == 1:
        return _laplace_grid(run_dir, epochs[0], replica, nbetas, gammas, device, mode)
    got = [_laplace_grid(run_dir, e, replica, nbetas, gammas, device, mode) for e in epochs]
    if any(v is None for v, _, _ in got):
        return None, None, next((w for _, _, w in got if w), None)
    return np.stack([v for v, _, _ in got]), got[-1][1], None


def cell_rows(
    est: Any,
    cells: list[tuple[float, float]],
    nb_list: list[float],
    lap: np.ndarray | None,
    gam_list: list[float],
    epoch: int,
    replica: int,
    *,
    sampler: str | None = None,
    epochs: list[int] | None = None,
    mala: bool = False,
) -> list[dict[str, Any]]:
    """One row per (ε, γ, nβ) cell from an Estimate laid out as cells × nβ × chains.

    With ``epochs`` the layout is cells × checkpoints × nβ × chains, one row per cell and
    checkpoint, and ``lap`` is [K, B, Γ]. ``sampler`` adds a ``sampler`` column, ``mala`` a
    ``mala_accept`` column (mean over chains; NaN where the run did not record it).
    """
    K = len(epochs) if epochs else 1
    B = len(nb_list)
    llc = est.llc  # [G·K, B, C]
    acc = est.result.mala_accept
    acc = acc.reshape(len(cells) * K, B, -1).mean(-1) if acc is not None else None
    out = []
    for g, (eps, gam) in enumerate(cells):
        for k in range(K):
            grp = g * K + k
            lap_k = lap if lap is None or epochs is None else lap[k]
            for b, nb in enumerate(nb_list):
                d = est.diagnostics[grp * B + b] if est.diagnostics else {}
                chains = llc[grp, b]
                finite = chains[np.isfinite(chains)]
                mean = float(finite.mean()) if finite.size else math.nan
                std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
                flags = list(d.get("flags", []))
                lap_v = float(lap_k[b, gam_list.index(gam)]) if lap_k is not None else math.nan
                gap = mean / lap_v - 1.0 if np.isfinite(lap_v) and lap_v > 0 else math.nan
                row = {"sampler": sampler} if sampler is not None else {}
                row |= {
                    "epoch": epochs[k] if epochs else epoch,
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
                if mala:
                    row["mala_accept"] = float(acc[grp, b]) if acc is not None else math.nan
                out.append(row)
    return out


def _parquet_row(r: dict[str, Any]) -> dict[str, Any]:
    """Parquet-friendly row: flags as one comma-separated string."""
    return {**r, "flags": ",".join(r["flags"])}


def heatmap(cal: Calibration, path: Path) -> None:
    """One panel per (sampler,) nβ: ε (rows) × γ (columns), colour log10 λ̂ (at the last
    checkpoint), text λ̂ / λ_Lap, MALA acceptance, order τ and what failed at any checkpoint
    (disqualifying flags, 'target' for MALA, 'order')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_cells(cal.rows)
    cells = {k: c[-1] for k, c in groups.items()}  # each cell at its last epoch
    panels = list(dict.fromkeys((k[0], k[3]) for k in cells))
    eps = sorted({k[1] for k in cells})
    gams = sorted({k[2] for k in cells})
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.6 + 1.5 * len(gams) * len(panels), 1.2 + 0.7 * len(eps)),
        squeeze=False,
    )
    for ax, (sampler, nb) in zip(axes[0], panels, strict=True):
        grid = np.full((len(eps), len(gams)), np.nan)
        cell = {(k[1], k[2]): r for k, r in cells.items() if (k[0], k[3]) == (sampler, nb)}
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
            if np.isfinite(r.get("mala_accept", math.nan)):
                text += f"\nacc {r['mala_accept']:.2f}"
            if np.isfinite(r.get("order_tau", math.nan)):
                text += f"\nτ {r['order_tau']:.2f}"
            fails = failures(groups[(sampler, e, g, nb)], cal.mala_target, cal.order_min)
            bad = [d if c == "unhealthy" else c.split()[-1] for c, d in fails]
            if bad:
                text += "\n" + ",".join(bad)
            ax.text(
                j, i, text, ha="center", va="center", fontsize=7, color="white" if bad else "black"
            )
            if best is not None and cell_key(best) == (sampler, e, g, nb):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="red"))
        ax.set_xticks(range(len(gams)), [f"{g:g}" for g in gams])
        ax.set_yticks(range(len(eps)), [f"{e:g}" for e in eps])
        ax.set_xlabel("γ (localisation)")
        ax.set_ylabel("ε (step size)")
        who = f"{sampler}, " if sampler else ""
        ax.set_title(f"λ̂ mean, {who}nβ = {nb:.4g} (red: recommended)", fontsize=9)
        fig.colorbar(im, ax=ax, label="log10 λ̂")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def format_recommendation(cal: Calibration) -> list[str]:
    """Human-readable lines for the CLI: the advice per nβ, why it won, and any notes."""
    lines = []
    for nb, r in cal.recommended.items():
        why = [f"  why: {cal.reasons[nb]}"] if nb in cal.reasons else []
        if r is None:
            lines.append(f"nβ={nb:.4g}: no healthy cell; try smaller step sizes or longer burn-in")
            lines += why
            continue
        lap = (
            f", λ_Lap {r['laplace']:.4g} (gap {100 * r['laplace_gap']:+.0f}%)"
            if np.isfinite(r["laplace"])
            else ""
        )
        warn = " [low ESS: lengthen chains]" if "low_ess" in r["flags"] else ""
        who = f"{r['sampler']} " if r.get("sampler") else ""
        lines.append(
            f"nβ={nb:.4g}: recommend {who}ε={r['step_size']:g}, γ={r['gamma']:g} "
            f"(λ̂ {r['llc_mean']:.4g} ± {r['llc_std']:.2g}{lap}){warn}"
        )
        lines += why
    return lines + cal.notes


def to_json(cal: Calibration) -> dict[str, Any]:
    """The calibration as plain JSON data: rows, the recommended cell and its reason per nβ."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return {
        "rows": [{k: clean(v) for k, v in r.items()} for r in cal.rows],
        "recommended": [
            {
                "nbeta": nb,
                "cell": None if r is None else {k: clean(v) for k, v in r.items()},
                "reason": cal.reasons.get(nb, ""),
            }
            for nb, r in cal.recommended.items()
        ],
        "laplace_method": cal.laplace_method,
        "notes": cal.notes,
        "table": str(cal.table) if cal.table else None,
        "figure": str(cal.figure) if cal.figure else None,
    }


__all__ = [
    "DISQUALIFYING",
    "ORDER_MIN",
    "Calibration",
    "calibrate",
    "cell_rows",
    "check_fraction",
    "check_samplers",
    "consensus_order",
    "explain",
    "failures",
    "format_recommendation",
    "grid_layout",
    "heatmap",
    "kendall_tau",
    "order_check",
    "per_replica",
    "recommend",
    "to_json",
]

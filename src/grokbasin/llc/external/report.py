"""Figure and HTML report of an external run: checkpoint losses and the LLC trajectory by step."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from grokbasin.config import LLCConfig, safe_load
from grokbasin.llc.advice import advice_lines
from grokbasin.llc.external.inputs import SPEC_FILE
from grokbasin.report import figures as figs
from grokbasin.report.dashboard import dashboard_section
from grokbasin.report.html import Image, Section, Table, config_tables, flatten
from grokbasin.report.html import write_report as write_html
from grokbasin.store import query
from grokbasin.store.llc_results import llc_summary
from grokbasin.store.query import Want
from grokbasin.store.rundir import RunDir, read_parquet


def trajectory_figure(
    metrics: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    sampler: dict[str, Any],
    title: str,
    restricted: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """Two panels against step: loss at each checkpoint, and λ̂ (mean, min–max over chains),
    plus one dashed series per weight restriction (name -> ``query.llc_arrays`` + patterns)."""
    with figs.style():
        fig, axes = figs.new_figure(2, 1, width=9.0, row_height=2.5, sharex=True)
        ax_loss, ax_llc = axes[0, 0], axes[1, 0]
        m = sorted(metrics, key=lambda r: r["epoch"])
        step = np.array([r["epoch"] for r in m], float)
        for key, name in (("train_loss", "train"), ("val_loss", "val")):
            v = np.array([r.get(key, np.nan) for r in m], float)
            if np.isfinite(v).any():
                label = f"{'training' if name == 'train' else 'validation'} loss at checkpoint"
                ax_loss.plot(step, np.where(v > 0, v, np.nan), color=figs.COLORS[name], label=label)
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel("loss (log scale)")
        figs.legend_outside(ax_loss)
        steps = sorted({int(r["epoch"]) for r in rows})
        chains = sorted({int(r["chain"]) for r in rows})
        vals = np.full((len(steps), len(chains)), np.nan)
        flagged = np.zeros(len(steps), bool)
        for r in rows:
            e, c = steps.index(int(r["epoch"])), chains.index(int(r["chain"]))
            vals[e, c] = r["llc"]
            flagged[e] |= bool(r["flags"])
        x = np.array(steps, float)
        figs.plot_band(
            ax_llc, x, vals, color=figs.COLORS["llc"],
            label=f"SGLD $\\hat\\lambda$, mean of {len(chains)} chains",
        )  # fmt: skip
        if flagged.any():
            mean = figs.band_stats(vals)[0]
            ax_llc.plot(
                x[flagged], mean[flagged], linestyle="none", marker="o", markerfacecolor="none",
                markeredgecolor=figs.COLORS["flag"], markersize=7,
                label=f"health flag ({int(flagged.sum())} of {len(steps)} checkpoints)",
            )  # fmt: skip
        figs.plot_restricted(ax_llc, restricted)
        ax_llc.set_ylabel("LLC")
        ax_llc.set_xlabel("step (number in the checkpoint file name)")
        figs.legend_outside(ax_llc)
        fig.suptitle(title, fontsize=11)
        caption = (
            "LLC panel: SGLD estimate λ̂ = nβ·(E[L_B(w)] − L_n(w*)) on the given data; line = "
            f"mean over chains, band = min–max; {figs.describe_sampler(sampler)}."
        )
        if restricted:
            caption += "\n" + figs.restricted_caption(restricted) + "."
        figs.add_caption(fig, caption)
    return fig


def write_report(run: RunDir, llc_cfg: LLCConfig, n: int) -> Path:
    """figures/trajectory.png and report.html for the sampler settings ``llc_cfg``."""
    shash = llc_cfg.sampler_hash()
    nbeta = llc_cfg.resolve_nbeta(n)
    rows, main = query.llc_rows([Want(run.path, shash, "any"), Want(run.path, shash, nbeta)])
    metrics = read_parquet(run.metrics).to_pylist() if run.metrics.exists() else []
    config = safe_load(run.config.read_text())
    spec = json.loads((run.path / SPEC_FILE).read_text())
    sampler = figs.sampler_settings(llc_cfg, n)
    model = config.get("model", {})
    title = f"{model.get('name')} ({model.get('parameters'):,} parameters), n = {n}"
    found = query.restriction_hashes(run.path, llc_cfg)
    restricted = {}
    for (name, (_, pats)), rs in zip(
        found.items(), query.llc_rows([Want(run.path, h, nbeta) for h, _ in found.values()]),
        strict=True,
    ):  # fmt: skip
        arrays = query.llc_arrays(rs)
        if arrays is not None:
            restricted[name] = {**arrays, "patterns": pats}
    fig = trajectory_figure(metrics, main, sampler, title, restricted)
    png = figs.save_png(fig, run.figures / "trajectory.png")
    summary = llc_summary(rows, nbeta)
    health = advice_lines(rows, shlex.quote(str(run.path)))
    dash = dashboard_section(run.path, rows, shash, nbeta)
    inputs = [
        {"input": "model", "value": spec.get("model") or f"{model.get('name')} (Python object)"},
        {"input": "loss", "value": config.get("train", {}).get("loss")},
        {"input": "data", "value": spec.get("data") or "(Python object)"},
        {"input": "training samples n", "value": n},
        {"input": "checkpoints", "value": f"{len(spec['steps'])}: " + ", ".join(spec["labels"])},
    ]
    sections = [
        Section(
            "Sampler health",
            warnings=health,
            ok="All sampler health checks passed (finite losses, no explosion, λ̂ ≥ 0, chains "
            "agree, enough effective samples).",
        ),
        *([dash] if dash is not None else []),
        Section("Figures", figures=[Image("LLC trajectory", data=png)]),
        Section(
            "LLC estimates",
            tables=[Table(summary)],
            paragraphs=[
                "λ̂ = nβ·(E[L_B(w)] − L_n(w*)) per checkpoint, mean and std over chains; absolute "
                "values are comparable only at fixed sampler settings. Pick the settings with "
                "`grokbasin llc calibrate RUN_DIR`."
            ],
        ),
        Section("Inputs", tables=[Table(inputs, columns=["input", "value"])]),
        Section("Configuration", tables=config_tables(config)),
        Section(
            "Provenance",
            tables=[
                Table(
                    [{"field": k, "value": v} for k, v in flatten(run.read_provenance()).items()],
                    columns=["field", "value"],
                )
            ],
        ),
    ]
    return write_html(
        run.report, f"grokbasin external run {run.path.name}", sections, str(run.path)
    )

"""Influence along a built-in run's trajectory: per-sample loss traces, susceptibilities and
Bayesian influence functions at every selected checkpoint, in batched sampler calls.

Every checkpoint × training replica × chain (main nβ only) samples in one call per chunk of
checkpoints (``llc.trajectory`` chunking), recording at each draw the mean loss on ``train``
(the sampling task of the susceptibilities), the per-sample losses on the training pairs and on
the probe subset. Per checkpoint it stores in RUN_DIR/llc_influence/<key>.safetensors (the
store's checksummed safetensors; ``key`` hashes the sampler settings and the probe):

* ``samples_train_<E>`` [R_train, C, D, n] and ``samples_probe_<E>`` [R_train, C, D, m]: the
  per-sample traces (float32);
* ``sus_<E>`` [R_train, m]: the probe samples' susceptibilities (``llc.susceptibilities``, the
  unrestricted run, sampling task = the training loss);
* ``bif_<E>`` [R_train, n]: each training pair's Bayesian influence on the probe's mean loss,
  BIF(z_i, φ) = −Cov(ℓ_i, φ) (``llc.bif``, kind="influence").

A rerun samples only checkpoints missing from the file (same numbers: each chain's streams
depend on its run, checkpoint, replica and chain only). The per-sample traces' size is stated
and refused above ``trace_budget_mb`` before any work. A PNG figure sits next to the file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from grokbasin.config import LLCConfig, RunConfig, short_hash
from grokbasin.llc.influence import bif, susceptibilities
from grokbasin.llc.observables import TRACE_BUDGET_MB, check_trace_budget
from grokbasin.llc.subsets import subset_rows
from grokbasin.llc.targets import from_modular
from grokbasin.llc.trajectory import (
    check_chunks_fit,
    nbeta_values,
    run_config,
    run_identity,
    sample_with_progress,
    sampling_rows,
    select_epochs,
)
from grokbasin.progress import console
from grokbasin.store.rundir import RunDir, holds_run_locks

LAYOUT = "replica,chain,draw[,sample]"


@dataclass
class InfluenceRun:
    """What :func:`estimate_influence` did: the results file, its figure and the epochs."""

    path: Path
    figure: Path
    trace_bytes: int
    computed: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)


def influence_key(llc_cfg: LLCConfig, probe: str) -> str:
    """Results-file key: the sampler's settings and the probe subset."""
    return short_hash({"sampler": llc_cfg.sampler_hash(), "probe": probe, "kind": "influence"})


@holds_run_locks("run_dir")
def estimate_influence(
    run_dir: str | Path,
    llc_cfg: LLCConfig,
    probe: str = "val",
    device: str = "cpu",
    progress: bool = True,
    trace_budget_mb: float = TRACE_BUDGET_MB,
) -> InfluenceRun:
    """Per-sample traces, susceptibilities and BIFs at the selected checkpoints of a built-in
    run (see the module docstring); done checkpoints are kept, not redone."""
    run = RunDir(run_dir)
    cfg = run_config(run)
    epochs = select_epochs(run, llc_cfg.checkpoints)
    rows = {"train": subset_rows(cfg, "train"), "probe": subset_rows(cfg, probe)}
    sample_rows = sampling_rows(cfg, llc_cfg)  # the posterior's data (llc.data)
    out_dir = run.path / "llc_influence"
    path = out_dir / f"{influence_key(llc_cfg, probe)}.safetensors"
    have, old = run.load_tensors(path) if path.exists() else ({}, {})
    wall = float(old.get("wall_s", 0.0))
    todo = [e for e in epochs if f"sus_{e}" not in have]
    C = llc_cfg.chains
    per = rows["train"].shape[0] * C
    sizes = {k: int(v.shape[1]) for k, v in rows.items()}
    size = check_trace_budget(
        per * len(todo), llc_cfg.draws, sizes, list(sizes), trace_budget_mb
    )  # every chunk's traces end up in memory together before they are written
    if todo:
        console.print(
            f"per-sample loss traces: {size / 2**20:,.2f} MiB "
            f"(budget trace_budget_mb = {trace_budget_mb:g})"
        )
    for part in check_chunks_fit([per] * len(todo), cfg, llc_cfg, device):
        chunk = [todo[i] for i in part]
        t0 = time.perf_counter()
        have.update(
            _sample(run, cfg, llc_cfg, chunk, sample_rows, rows, device, progress, trace_budget_mb)
        )
        wall += time.perf_counter() - t0
        meta = {"probe": probe, "sampler_hash": llc_cfg.sampler_hash(), "layout": LAYOUT}
        run.save_tensors(path, have, {**meta, "wall_s": wall})  # after every chunk: resumable
    figure = out_dir / f"{influence_key(llc_cfg, probe)}.png"
    caption = (
        f"grokbasin llc influence RUN --probe {probe}: {llc_cfg.chains} chains × "
        f"{llc_cfg.draws} draws per checkpoint × training replica; sampling wall time "
        f"{wall:.1f} s in all ({device})"
    )
    write_figure(have, epochs, probe, figure, caption, cfg.train.unit)
    return InfluenceRun(path, figure, size, todo, [e for e in epochs if e not in todo])


def _sample(
    run: RunDir,
    cfg: RunConfig,
    llc_cfg: LLCConfig,
    epochs: Sequence[int],
    sample_rows: torch.Tensor,
    rows: dict[str, torch.Tensor],
    device: str,
    progress: bool,
    budget: float,
) -> dict[str, torch.Tensor]:
    """One batched sampler call over ``epochs`` × training replicas × chains; the results."""
    n = sample_rows.shape[1]
    nbeta = nbeta_values(llc_cfg, n)[:1]  # the main nβ only
    C, run_id = llc_cfg.chains, run_identity(cfg.run_hash())
    cks = [run.load_checkpoint(e, device) for e in epochs]
    R_train = sample_rows.shape[0]
    p0 = {k: torch.cat([c[k] for c in cks]).to(device).repeat_interleave(C, 0) for k in cks[0]}

    def rep(r: torch.Tensor) -> torch.Tensor:
        return r.repeat(len(epochs), 1).repeat_interleave(C, 0)

    obs = {k: rep(v) for k, v in rows.items()}
    target = from_modular(
        cfg, p0, rep(sample_rows), min(llc_cfg.batch_size, n),
        observables=obs, per_sample=list(obs),
    )  # fmt: skip
    ids = [[run_id, e, r] for e in epochs for r in range(R_train)]
    label = f"influence: {len(ids)} checkpoints×replicas × {C} chains"
    est = sample_with_progress(
        target, llc_cfg, len(ids), nbeta, ids, label, progress, trace_budget_mb=budget
    )
    res = est.result

    def per_epoch(a: np.ndarray) -> np.ndarray:  # [G·C, ...] -> [epochs, R_train, C, ...]
        return a.reshape(len(epochs), R_train, C, *a.shape[1:])

    train_mean = per_epoch(res.observables["train"])
    train_s, probe_s = (per_epoch(res.sample_losses[k]) for k in ("train", "probe"))
    init = per_epoch(res.full_init_loss)
    sus = susceptibilities(train_mean, probe_s, init)  # [E, R_train, m]
    infl = bif(train_s, probe_s.mean(-1, keepdims=True), kind="influence")[..., 0]  # [E, R, n]
    out: dict[str, torch.Tensor] = {}
    for i, e in enumerate(epochs):
        out[f"samples_train_{e}"] = torch.from_numpy(np.ascontiguousarray(train_s[i]))
        out[f"samples_probe_{e}"] = torch.from_numpy(np.ascontiguousarray(probe_s[i]))
        out[f"sus_{e}"] = torch.from_numpy(sus[i]).float()
        out[f"bif_{e}"] = torch.from_numpy(infl[i]).float()
    return out


def write_figure(
    have: dict[str, torch.Tensor],
    epochs: Sequence[int],
    probe: str,
    path: Path,
    caption: str,
    unit: str = "pass",
) -> Path:
    """Susceptibilities of the probe samples and BIFs of the training pairs against the
    checkpoint: median and 10–90% band over samples × replicas."""
    from grokbasin.report.figures import add_caption, new_figure, save_png, unit_label

    fig, axes = new_figure(1, 2, width=9.0, row_height=3.0)
    for ax, key, title in (
        (axes[0, 0], "sus", f"susceptibility χ of {probe} samples"),
        (axes[0, 1], "bif", f"BIF of training pairs on mean {probe} loss"),
    ):
        vals = [have[f"{key}_{e}"].double().numpy().ravel() for e in epochs]
        q = np.array([np.nanpercentile(v, [10, 50, 90]) for v in vals])
        ax.plot(epochs, q[:, 1], marker="o", markersize=3, color="C0", label="median")
        ax.fill_between(epochs, q[:, 0], q[:, 2], color="C0", alpha=0.22, lw=0, label="10–90%")
        ax.set_title(title)
        ax.set_xlabel(f"checkpoint ({unit_label(unit)})")
        ax.legend()
    add_caption(fig, caption)
    save_png(fig, path)
    return path

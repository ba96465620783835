"""LLC trajectories: every selected checkpoint × training replica × chain × nβ of one or more runs
sampled in ONE batched sampler call, written to RUN_DIR/llc.parquet (SPEC §5, paper Fig. 3).

Very large trajectories are split into consecutive calls of whole checkpoints of at most
:func:`chunk_replicas` replicas each, every call written as soon as it finishes: Ctrl-C keeps
the finished ones and a rerun samples only the rest, with the same numbers (every chain's
streams depend on its run, checkpoint, replica and chain only). Before any work, the largest
call's memory is estimated and refused when the device cannot hold it.

Rows are keyed by (sampler_hash, epoch); a re-run computes only checkpoints that lack rows for
its sampler hash and keeps every other row. Loss traces go to
RUN_DIR/llc_traces/<sampler_hash>.safetensors as ``epoch_<E>`` -> [train replicas, nβ, chains,
draws] so figures and ArviZ export can reuse them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grokbasin.config import RECORD_FIELDS, LLCConfig, RunConfig
from grokbasin.device import check_fits
from grokbasin.errors import ConfigError, CorruptFileError
from grokbasin.llc import health_traces
from grokbasin.llc.diagnostics import GROUP_FLAGS
from grokbasin.llc.estimate import Estimate, estimate_llc
from grokbasin.llc.samplers import MALA_METHODS
from grokbasin.llc.targets import from_modular, modular_train_rows
from grokbasin.progress import make_progress
from grokbasin.store import llc_results
from grokbasin.store.rundir import RunDir, holds_run_locks, recovery_hint

COLUMNS = llc_results.COLUMNS  # llc.parquet's columns, owned by store.llc_results


@dataclass
class RunLLC:
    """What :func:`estimate_runs` did for one run directory."""

    run: RunDir
    computed: list[int] = field(default_factory=list)  # epochs sampled now
    cached: list[int] = field(default_factory=list)  # epochs that already had rows
    restricted: dict[str, list[int]] = field(default_factory=dict)  # restriction -> sampled now


def select_epochs(run: RunDir, spec: str) -> list[int]:
    """The checkpoint epochs named by 'all', 'last' or 'E1,E2' (ConfigError if one is missing)."""
    from grokbasin.store.query import checkpoint_epochs  # the one llc.checkpoints parser

    have = run.checkpoint_epochs()
    if not have:
        raise CorruptFileError(f"{run.path}: no checkpoints found")
    try:
        return checkpoint_epochs(have, spec, strict=True)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {run.path})") from None


def run_config(run: RunDir) -> RunConfig:
    """The resolved config of a run directory, verified to be the run's (store.binding)."""
    from grokbasin.store.binding import run_config as verified

    return verified(run)


def nbeta_values(llc_cfg: LLCConfig, n: int) -> list[float]:
    """The main nβ followed by the extra temperature-sweep values (duplicates dropped)."""
    vals = [llc_cfg.resolve_nbeta(n)] + [float(v) for v in llc_cfg.nbetas]
    return list(dict.fromkeys(vals))


def _compat_key(cfg: RunConfig) -> str:
    """Runs with equal keys share data shapes, model and loss, so they batch together."""
    return json.dumps(
        [cfg.task.model_dump(exclude={"data_seed"}), cfg.model.model_dump(), cfg.train.loss],
        sort_keys=True,
    )


def estimate_run(
    run_dir: str | Path,
    llc_cfg: LLCConfig,
    device: str = "cpu",
    progress: bool = True,
) -> RunLLC:
    """LLC trajectory of one run directory (see :func:`estimate_runs`)."""
    return estimate_runs([run_dir], llc_cfg, device, progress)[0]


@holds_run_locks("run_dirs", many=True)
def estimate_runs(
    run_dirs: Sequence[str | Path],
    llc_cfg: LLCConfig,
    device: str = "cpu",
    progress: bool = True,
) -> list[RunLLC]:
    """Sample the selected checkpoints of all runs in one batched call per compatible run set.

    Writes/updates each RUN_DIR/llc.parquet (one row per checkpoint × training replica × chain ×
    nβ) and the traces file; checkpoints that already have rows for this sampler hash are skipped.
    With ``llc_cfg.restrict`` every restriction (and the unrestricted estimate) is one more
    factor of the same calls, each with its own row hash (``LLCConfig.variants``) and cache.
    """
    variants = llc_cfg.variants()
    results, todo = [], {}
    for rd in run_dirs:
        run = RunDir(rd)
        cfg = run_config(run)
        if llc_cfg.restrict:
            run_masks(cfg, llc_cfg)  # a bad pattern stops here, before anything is sampled
        epochs = select_epochs(run, llc_cfg.checkpoints)
        done = [llc_results.done_epochs(run, h) for _, h in variants]
        res = RunLLC(
            run, [e for e in epochs if e not in done[0]], [e for e in epochs if e in done[0]]
        )
        res.restricted = {
            name: [e for e in epochs if e not in d]
            for (name, _), d in zip(variants[1:], done[1:], strict=True)
        }
        work = [(e, v) for v in range(len(variants)) for e in epochs if e not in done[v]]
        results.append(res)
        if work:
            todo.setdefault(_compat_key(cfg), []).append((res, cfg, work))
    for batch in todo.values():
        _sample_batch(batch, llc_cfg, device, progress)
    return results


def run_masks(cfg: RunConfig, llc_cfg: LLCConfig) -> dict[str, dict[str, torch.Tensor]]:
    """The restrictions' parameter masks for a built-in run's model (ConfigError if a pattern
    names nothing)."""
    from grokbasin.llc.restrict import restriction_masks, transformer_heads

    shapes = model_shapes(cfg)
    heads = (
        transformer_heads(list(shapes), cfg.model.heads)
        if cfg.model.name == "transformer"
        else None
    )
    return restriction_masks(shapes, llc_cfg.restrict, heads)


CHUNK_ENV = "GROKBASIN_LLC_CHUNK"


def chunk_replicas(device: str) -> int:
    """Most replicas per sampler call (env GROKBASIN_LLC_CHUNK; default 256 on a CPU, else 4096):
    large enough to keep the device busy, small enough that an interrupt loses little."""
    given = os.environ.get(CHUNK_ENV, "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return 256 if torch.device(device).type == "cpu" else 4096


def chunks(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive indices of items with ``sizes`` replicas, at most ``limit`` per chunk (an
    item larger than ``limit`` is a chunk of its own)."""
    out: list[list[int]] = []
    total = limit + 1
    for i, s in enumerate(sizes):
        if total + s > limit:
            out.append([])
            total = 0
        out[-1].append(i)
        total += s
    return out


def check_sampler_fits(
    replicas: int, params: int, activations: int, device: str, what: str
) -> None:
    """Refuse, before any work, a sampler call whose estimated memory exceeds the device's:
    ~4 copies of the parameters (state, centre, gradient, noise) and the minibatch activations
    per replica, 4 bytes each."""
    check_fits(
        4 * replicas * (4 * params + activations),
        device,
        f"{what} ({replicas:,} sampler replicas of {params:,} parameters)",
        "use fewer chains, nβ values or checkpoints, or a smaller llc.batch_size",
    )


def check_chunks_fit(
    sizes: Sequence[int], cfg: RunConfig, llc_cfg: LLCConfig, device: str
) -> list[list[int]]:
    """The sampler calls (chunks) for checkpoints of ``sizes`` replicas each, refused before any
    work when the largest would not fit the device."""
    from grokbasin.train.loop import hidden_size, params_per_replica

    parts = chunks(sizes, chunk_replicas(device))
    check_sampler_fits(
        max(sum(sizes[i] for i in p) for p in parts),
        params_per_replica(cfg),
        4 * min(llc_cfg.batch_size, cfg.task.n_train) * hidden_size(cfg),
        device,
        "LLC sampling",
    )
    return parts


def check_llc_fits(cfg: RunConfig, device: str, runs: int = 1) -> None:
    """Refuse, before training or sampling, an LLC trajectory of ``runs`` runs like ``cfg`` at
    its selected checkpoints (all of them, at most) that the device cannot hold."""
    t, llc = cfg.train, cfg.llc
    if llc.restrict:
        run_masks(cfg, llc)  # a pattern that names nothing: refused before any work
    wanted = llc.epochs_wanted()
    n_ck = (
        1 if llc.checkpoints == "last" else len(wanted or []) or 2 + t.epochs // t.checkpoint_every
    )
    per = len(t.replicas()) * llc.chains * len(nbeta_values(llc, cfg.task.n_train))
    per *= len(llc.variants())  # restrictions are more replicas of the same calls
    check_chunks_fit([per] * (n_ck * runs), cfg, llc, device)


def _sample_batch(
    batch: list[tuple[RunLLC, RunConfig, list[tuple[int, int]]]],
    llc_cfg: LLCConfig,
    device: str,
    progress: bool,
) -> None:
    """Every (run, epoch, variant, training replica) group of compatible runs, in chunks of
    checkpoints (a variant: the unrestricted estimate or one restriction)."""
    items = [(res, cfg, e, v) for res, cfg, work in batch for e, v in work]
    cfg0 = batch[0][1]
    n = cfg0.task.n_train if llc_cfg.data == "train" else sampling_rows(cfg0, llc_cfg).shape[1]
    copies = len(nbeta_values(llc_cfg, n)) * llc_cfg.chains
    sizes = [len(cfg.train.replicas()) * copies for _, cfg, _, _ in items]
    for part in check_chunks_fit(sizes, batch[0][1], llc_cfg, device):
        _sample_checkpoints([items[i] for i in part], llc_cfg, device, progress)


def _sample_checkpoints(
    items: list[tuple[RunLLC, RunConfig, int, int]],
    llc_cfg: LLCConfig,
    device: str,
    progress: bool,
) -> None:
    """One sampler call over the (run, epoch, variant) items × training replicas; written when
    it finishes. Variants of one checkpoint share its chain streams (common random numbers)."""
    params, rows, ids, where, which = [], [], [], [], []
    shapes = model_shapes(items[0][1])
    loaded: dict[tuple[Path, int], dict[str, torch.Tensor]] = {}
    run_rows: dict[Path, torch.Tensor] = {}  # each run's split, built once per call
    for res, cfg, e, v in items:
        if res.run.path not in run_rows:
            run_rows[res.run.path] = sampling_rows(cfg, llc_cfg)  # [R_train, n]
        train_rows = run_rows[res.run.path]
        run_id = run_identity(cfg.run_hash())
        if (res.run.path, e) not in loaded:
            loaded[res.run.path, e] = res.run.load_checkpoint(e, device)
        ck = loaded[res.run.path, e]
        r_train = next(iter(ck.values())).shape[0]
        if r_train != train_rows.shape[0]:
            raise CorruptFileError(
                f"{res.run.checkpoint(e)}: {r_train} replicas, config says {train_rows.shape[0]}"
            )
        _check_architecture(res.run.checkpoint(e), ck, shapes)
        params.append(ck)
        rows.append(train_rows)
        ids += [[run_id, e, r] for r in range(r_train)]
        where += [(res, e, r, v) for r in range(r_train)]
        which += [v] * r_train
    cfg0 = items[0][1]
    p0 = {k: torch.cat([p[k] for p in params]).to(device) for k in params[0]}
    G, n = len(ids), rows[0].shape[1]
    nbetas = nbeta_values(llc_cfg, n)
    B, C = len(nbetas), llc_cfg.chains
    copies = B * C
    p_rep = {k: v.repeat_interleave(copies, 0) for k, v in p0.items()}
    row_rep = torch.cat(rows).repeat_interleave(copies, 0)
    masks = None
    if any(which):  # only restricted work carries masks: unrestricted calls are as before
        from grokbasin.llc.restrict import replica_masks

        per = run_masks(cfg0, llc_cfg)
        variants = [None] + [per[name] for name, _ in llc_cfg.variants()[1:]]
        which_rep = torch.tensor(which).repeat_interleave(copies)
        masks = replica_masks(shapes, variants, which_rep, device)
    target = from_modular(cfg0, p_rep, row_rep, min(llc_cfg.batch_size, n), masks=masks)
    label = f"{G} checkpoints×replicas × {C} chains × {B} nβ"
    est = sample_with_progress(target, llc_cfg, G, nbetas, ids, label, progress)
    _write(est, where, llc_cfg)


def sampling_rows(cfg: RunConfig, llc_cfg: LLCConfig) -> torch.Tensor:
    """Rows [R_train, n] the posterior's loss is on: the training split, or for the data-refined
    LLC (``llc.data``, Wang et al. 2024) the named subset, whose size is then the n of nβ."""
    if llc_cfg.data == "train":
        return modular_train_rows(cfg)
    from grokbasin.llc.subsets import subset_rows

    return subset_rows(cfg, llc_cfg.data)


def model_shapes(cfg: RunConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> per-replica shape of the config's model (one replica initialised)."""
    from grokbasin import rng
    from grokbasin.models import build_model

    params = build_model(cfg.model, cfg.task.p, cfg.task.p).init(rng.key([0]))
    return {k: tuple(v.shape[1:]) for k, v in params.items()}


def _check_architecture(
    path: Path, ck: dict[str, torch.Tensor], want: dict[str, tuple[int, ...]]
) -> None:
    """Refuse, naming the file, a checkpoint whose parameters are not the config's model's."""
    have = {k: tuple(v.shape[1:]) for k, v in ck.items()}
    if have != want:
        bad = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
        raise CorruptFileError(
            f"{path}: parameters {bad[:4]} do not have the shapes of the run's "
            "model (a checkpoint of another architecture); "
            f"{recovery_hint(path)}"
        )


def sample_with_progress(
    target: Any,
    llc_cfg: LLCConfig,
    groups: int,
    nbetas: list[float],
    group_ids: list[list[int]],
    label: str,
    progress: bool,
    step_size: Any = None,
    gamma: Any = None,
    mala: bool = False,
    trace_budget_mb: float | None = None,
) -> Estimate:
    """``estimate_llc`` with every setting from ``llc_cfg`` and a progress bar over the steps.

    ``step_size``/``gamma`` override the config with per-replica sequences (calibration grids);
    ``mala`` records MALA acceptance (calibration's acceptance target), as ``llc_cfg.mala`` does
    for the report's sampler dashboard, with ``llc_cfg.record_norms`` (the step norms);
    ``trace_budget_mb`` bounds per-sample observable traces (``llc.observables``).
    """
    total = llc_cfg.burnin + llc_cfg.draws * llc_cfg.thin
    with make_progress(progress) as bar:
        task = bar.add_task(label, total=total, stage="llc")
        return estimate_llc(
            target,
            groups=groups,
            chains=llc_cfg.chains,
            nbetas=nbetas,
            step_size=llc_cfg.step_size if step_size is None else step_size,
            gamma=llc_cfg.gamma if gamma is None else gamma,
            weight_decay=llc_cfg.weight_decay,
            noise_level=llc_cfg.noise_level,
            burnin=llc_cfg.burnin,
            draws=llc_cfg.draws,
            thin=llc_cfg.thin,
            seed=llc_cfg.seed,
            method=llc_cfg.method,
            options=llc_cfg.options,
            baseline=llc_cfg.baseline,
            record_norms=llc_cfg.record_norms,
            # llc.mala (the dashboard's) only where it applies: a calibration's sampler axis
            # copies the config onto samplers that MALA does not model
            mala=mala or (llc_cfg.mala and llc_cfg.method in MALA_METHODS),
            group_ids=group_ids,
            on_step=lambda k: bar.update(task, advance=k),
            **({} if trace_budget_mb is None else {"trace_budget_mb": trace_budget_mb}),
        )


def run_identity(content_hash: str) -> int:
    """The chain streams' run id: the first 7 hex digits of the run's content hash (for a
    built-in run, the resolved config's ``run_hash``), never its folder name, so a copied or
    renamed run re-estimates to the same numbers."""
    return int(content_hash[:7], 16)


def sampler_json(llc_cfg: LLCConfig, restriction: str | None = None) -> str:
    """The sampler settings as stored with every LLC row (all but ``checkpoints``,
    ``restrict`` and a plain LLC's ``data``); a restricted row adds its own restriction under
    ``"restriction"`` (not a config field, so readers of the newest settings never make a
    restriction sticky)."""
    skip = {"checkpoints", "restrict"} | ({"data"} if llc_cfg.data == "train" else set())
    skip |= {k for k in RECORD_FIELDS if not getattr(llc_cfg, k)}  # stored only when on
    data = llc_cfg.model_dump(mode="json", exclude=skip)
    if restriction is not None:
        data["restriction"] = {"name": restriction, "patterns": llc_cfg.restrict[restriction]}
    return json.dumps(data, sort_keys=True)


def variant_labels(llc_cfg: LLCConfig) -> list[dict[str, Any]]:
    """Per variant of ``llc_cfg.variants()``, the fields that relabel an unrestricted row as
    that variant's ({} for the unrestricted estimate itself); computed once per write."""
    return [{}] + [
        {
            "restriction": name,
            "sampler_hash": llc_cfg.restriction_hash(name),
            "sampler_config": sampler_json(llc_cfg, name),
        }
        for name in llc_cfg.restrict
    ]


def group_rows(
    est: Estimate, llc_cfg: LLCConfig, shash: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(group g, llc.parquet columns after epoch and replica) per group × nβ × chain."""
    res = est.result
    B, C = len(est.nbetas), est.chains
    llc, init, mean = est.llc, est._gbc(res.init_loss), est._gbc(res.mean_loss)
    reg = est.regressed
    scfg = sampler_json(llc_cfg)
    for g in range(llc.shape[0]):
        for b in range(B):
            diag = est.diagnostics[g * B + b] if est.diagnostics else {}
            group_flags = [f for f in diag.get("flags", []) if f in GROUP_FLAGS]
            for c in range(C):
                chain_flags = diag.get("chain_flags", [[]] * C)[c]
                yield (
                    g,
                    {
                        "chain": c,
                        "nbeta": float(est.nbetas[b]),
                        "llc": float(llc[g, b, c]),
                        "llc_regressed": float(reg[g, c]) if reg is not None else float("nan"),
                        "init_loss": float(init[g, b, c]),
                        "mean_loss": float(mean[g, b, c]),
                        "rhat": float(diag.get("rhat", float("nan"))),
                        "ess": float(diag.get("ess", float("nan"))),
                        "trend": float(diag.get("trend", float("nan"))),
                        "flags": ",".join(sorted(set(chain_flags) | set(group_flags))),
                        "sampler_hash": shash,
                        "sampler_config": scfg,
                    },
                )


def _rows_for(est: Estimate, where: list, llc_cfg: LLCConfig) -> dict:
    """llc.parquet rows per run, from the grouped estimate (each group's variant's identity)."""
    labels = variant_labels(llc_cfg)
    out: dict[Path, list[dict]] = {}
    for g, row in group_rows(est, llc_cfg, llc_cfg.sampler_hash()):
        run_res, epoch, rep, v = where[g]
        out.setdefault(run_res.run.path, []).append(
            {"epoch": int(epoch), "replica": int(rep), **row, **labels[v]}
        )
    return out


def _write(est: Estimate, where: list, llc_cfg: LLCConfig) -> None:
    """Merge new rows into each run's llc.parquet and traces files (one per row hash)."""
    new = _rows_for(est, where, llc_cfg)
    hashes = [h for _, h in llc_cfg.variants()]
    traces = est._gbc(est.result.traces)  # [G, B, C, D]
    health, steps = health_traces.per_group(
        est.result.norms, est.result.mala_accept, traces.shape[:3]
    )
    for path, rows in new.items():
        run = RunDir(path)
        llc_results.merge_write(run, rows)
        for v in sorted({vv for rr, _, _, vv in where if rr.run.path == path}):
            tpath = run.path / "llc_traces" / f"{hashes[v]}.safetensors"
            tensors = run.load_tensors(tpath)[0] if tpath.exists() else {}
            mine = [
                (g, ee)
                for g, (rr, ee, _, vv) in enumerate(where)
                if rr.run.path == path and vv == v
            ]
            by_epoch = {e: [g for g, ee in mine if ee == e] for e in sorted({ee for _, ee in mine})}
            for e, gs in by_epoch.items():
                tensors[f"epoch_{e}"] = torch.from_numpy(np.ascontiguousarray(traces[gs])).float()
            health_traces.write_health(run, hashes[v], health, steps, llc_cfg.burnin, by_epoch)
            run.save_tensors(
                tpath,
                tensors,
                {"nbetas": [float(b) for b in est.nbetas], "layout": "replica,nbeta,chain,draw"},
            )

"""Paper B's runs on the paper-A run store: deduplicated, resumable, batched, on any backend.

Each :class:`BRun` owns ``<root>/<run hash>/`` (config.yaml, provenance.json, metrics.parquet,
checkpoints/epoch_<step>.safetensors, llc.parquet), so ``grokbasin runs --sql`` sees paper B next
to paper A and a second call computes nothing. Runs that differ only in seed, learning rate,
weight decay, data (domain, noise) or size (within a power-of-two bucket) form one *group*: ONE
replica-batched training and ONE batched SGLD call, with the size masks passed as the target's
per-replica ``aux`` data. Independent groups go to :func:`grokbasin.experiments.backends.run_jobs`
(inline, process pool of ``workers``, or Ray). A killed training resumes from the last saved
optimiser state; finished runs and finished estimates are never recomputed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from grokbasin import rng
from grokbasin.analysis.free_energy import grokking_times
from grokbasin.errors import CorruptFileError
from grokbasin.experiments.paper_b.families import (
    FAMILIES,
    FamilyDef,
    pad_stack,
    size_mask,
    units,
    unpad,
)
from grokbasin.experiments.paper_b.spec import BRun, dump_yaml
from grokbasin.store import llc_results, query
from grokbasin.store.rundir import RunDir, atomic_write, locked, read_parquet, write_parquet

_METRICS = pa.schema(
    [
        ("epoch", pa.int64()),
        ("step", pa.int64()),
        ("replica", pa.int64()),
        ("seed", pa.int64()),
        ("lr", pa.float64()),
        ("weight_decay", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("val_loss", pa.float64()),
        ("val_acc", pa.float64()),
    ]
)
_STATE_SAVES = 10  # optimiser-state snapshots per training (resume points)
ELEMENT_BUDGET = 1 << 25  # replicas·samples·units per job (bounds float64 polynomial memory)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------ what exists already


def metrics_rows(run: RunDir) -> list[dict[str, Any]]:
    return read_parquet(run.metrics).to_pylist() if run.metrics.exists() else []


def wanted_epochs(cfg: BRun, run: RunDir) -> list[int]:
    """Checkpoints an estimate covers: last, all, or (i, j) of a grokking run (none if no grok)."""
    have = run.checkpoint_epochs()
    sel = cfg.llc.checkpoints
    if sel == "all":
        return have
    if sel == "last":
        return have[-1:]
    m = sorted(metrics_rows(run), key=lambda r: r["epoch"])
    if not m or m[0].get("train_acc") is None:
        return []
    t = grokking_times(
        np.array([r["epoch"] for r in m]),
        np.array([r["train_acc"] for r in m]),
        np.array([r["val_acc"] for r in m]),
    )
    return [] if t is None or t[1] <= t[0] else [t[0], t[1]]


def sampled_epochs(run: RunDir, sampler_hash: str) -> set[int]:
    """Epochs this sampler estimated; a damaged llc.parquet stops the caller (CorruptFileError)."""
    return llc_results.done_epochs(run, sampler_hash) if run.path.exists() else set()


def needs_sampling(cfg: BRun, run: RunDir) -> bool:
    if not run.is_trained():
        return True
    return not set(wanted_epochs(cfg, run)) <= sampled_epochs(run, cfg.llc.sampler_hash())


@dataclass
class BJob:
    """Picklable unit of work: one batchable group of runs (config dumps) under a root."""

    runs: list[dict[str, Any]]
    root: str
    label: str = ""


@dataclass
class BJobResult:
    trained: int
    sampled: int


def group_key(cfg: BRun) -> str:
    """Runs with equal keys train and sample as one replica batch (sizes bucketed by 2^k)."""
    task = cfg.task.model_dump(exclude={"c", "true_degree", "noise"})
    bucket = 1 << (units(cfg) - 1).bit_length()
    model = cfg.model.model_dump(exclude={"size"}) | {"bucket": bucket}
    train = cfg.train.model_dump(exclude={"seeds", "lr", "weight_decay"})
    return json.dumps([task, model, train, cfg.device], sort_keys=True)


def _elements(cfg: BRun) -> int:
    return (cfg.task.n or 1000) * units(cfg) * cfg.llc.chains


def jobs_for(cfgs: list[BRun], root: str | Path) -> list[BJob]:
    """One job per batchable group (split by the element budget) with work still to do."""
    groups: dict[str, list[BRun]] = {}
    for c in cfgs:
        groups.setdefault(group_key(c), []).append(c)
    jobs = []
    for g in groups.values():
        key = {c.run_hash() + c.llc.sampler_hash() + c.llc.checkpoints: c for c in g}
        todo = [c for c in key.values() if needs_sampling(c, RunDir(Path(root) / c.run_hash()))]
        chunk: list[BRun] = []
        used = 0
        for c in sorted(todo, key=units):
            if chunk and used + _elements(c) > ELEMENT_BUDGET and c.family == "polynomial":
                jobs.append(_job(chunk, root))
                chunk, used = [], 0
            chunk.append(c)
            used += _elements(c)
        if chunk:
            jobs.append(_job(chunk, root))
    return jobs


def _job(chunk: list[BRun], root: str | Path) -> BJob:
    sizes = sorted({c.model.size for c in chunk})
    label = f"{chunk[0].family} sizes {sizes[0]}..{sizes[-1]} ({len(chunk)} runs)"
    return BJob([c.model_dump(mode="json") for c in chunk], str(root), label)


# ------------------------------------------------------------------ training


def _metrics_at(
    fam: FamilyDef, cfgs: list[BRun], step: int, params, x, y, aux, extra
) -> list[dict[str, Any]]:
    with torch.no_grad():
        loss = fam.loss(fam.forward(params, x, **aux), y).double().tolist()
        ev = (
            {k: v.double().tolist() for k, v in fam.evaluate(params, extra).items()}
            if fam.evaluate
            else {}
        )
    return [
        {
            "epoch": step,
            "step": step,
            "replica": 0,
            "seed": c.seed,
            "lr": c.train.lr[0],
            "weight_decay": c.train.weight_decay[0],
            "train_loss": loss[r],
            "train_acc": ev.get("train_acc", [None] * len(cfgs))[r],
            "val_loss": ev.get("val_loss", [None] * len(cfgs))[r],
            "val_acc": ev.get("val_acc", [None] * len(cfgs))[r],
        }
        for r, c in enumerate(cfgs)
    ]


def _write_metrics(run: RunDir, rows: list[dict[str, Any]]) -> None:
    write_parquet(run.metrics, pa.Table.from_pylist(rows, schema=_METRICS))


def _resume_point(cfgs: list[BRun], runs: list[RunDir], device: str) -> tuple[int, list | None]:
    """(step, per-run state tensors) when every run has a saved state at the same step."""
    states = []
    for run in runs:
        if not run.state.exists():
            return 0, None
        try:
            t, meta = run.load_tensors(run.state, device)
        except CorruptFileError:
            return 0, None
        states.append((int(meta.get("step", 0)), t))
    steps = {s for s, _ in states}
    if len(steps) != 1:
        return 0, None
    return steps.pop(), [t for _, t in states]


def train_batch(cfgs: list[BRun], root: str | Path) -> None:
    """Train (or solve, when train.steps = 0) the runs as one replica batch; write their dirs."""
    from grokbasin.device import intra_op_threads

    with intra_op_threads(cfgs[0].device):  # one intra-op thread: see intra_op_threads
        _train_batch(cfgs, root)


def _train_batch(cfgs: list[BRun], root: str | Path) -> None:
    from grokbasin.train.generic import fit

    fam = FAMILIES[cfgs[0].family]
    dev = cfgs[0].device
    runs = [RunDir(Path(root) / c.run_hash()) for c in cfgs]
    for c, run in zip(cfgs, runs, strict=True):
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.config.exists():
            atomic_write(run.config, dump_yaml(c).encode())
        run.write_provenance({"kind": "paper-b", "started": _now(), "finished": False})
    reps = [fam.make(c, dev) for c in cfgs]
    x = pad_stack([{"x": r.x} for r in reps])["x"]
    y = pad_stack([{"y": r.y} for r in reps])["y"]
    params = pad_stack([r.params for r in reps])
    mask = size_mask(cfgs, dev, fam.dtype)
    aux = {"mask": mask}
    extra = {"x": x, "y": y, "mask": mask}
    if reps[0].extra:
        extra |= pad_stack([r.extra for r in reps])
    steps = cfgs[0].train.steps
    every = cfgs[0].train.checkpoint_every or max(1, steps)
    history: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    saves = max(1, (steps // every) // _STATE_SAVES)

    def on_ckpt(step: int, p, state) -> None:
        rows = _metrics_at(fam, cfgs, step, p, x, y, aux, extra)
        for r, (c, run) in enumerate(zip(cfgs, runs, strict=True)):
            history[r].append(rows[r])
            run.save_checkpoint(step, unpad(fam, p, r, units(c)), {"step": step})
        if 0 < step < steps and (step // every) % saves == 0:  # a resume point
            for r, run in enumerate(runs):
                flat = {f"p.{k}": v[r : r + 1] for k, v in p.items()}
                flat |= {f"s.{k}": v[r : r + 1] for k, v in state.items() if v.dim() > 0}
                run.save_tensors(run.state, flat, {"step": step, "opt_step": int(state["step"])})
                _write_metrics(run, history[r])

    if steps == 0:
        on_ckpt(0, params, {})
    else:
        start, saved = _resume_point(cfgs, runs, dev)
        state = None
        if saved is not None:
            params = pad_stack(
                [{k[2:]: v for k, v in s.items() if k.startswith("p.")} for s in saved]
            )
            state = pad_stack(
                [{k[2:]: v for k, v in s.items() if k.startswith("s.")} for s in saved]
            )
            meta = runs[0].load_tensors(runs[0].state, dev)[1]
            state["step"] = torch.tensor(int(meta["opt_step"]), dtype=torch.int64)
            history = [[h for h in metrics_rows(run) if h["step"] <= start] for run in runs]
        t = cfgs[0].train
        fit(
            fam.forward,
            params,
            x,
            y,
            fam.loss,
            rng.key([c.seed for c in cfgs], dev),
            steps=steps,
            batch_size=t.batch_size or x.shape[-2],
            optimizer=t.optimizer,
            lr=torch.tensor([c.train.lr[0] for c in cfgs], device=dev),
            momentum=t.momentum,
            weight_decay=torch.tensor([c.train.weight_decay[0] for c in cfgs], device=dev),
            log_every=steps + 1,
            checkpoint_every=every,
            aux=aux,
            on_checkpoint=on_ckpt,
            keep_checkpoints=False,
            start_step=start,
            state=state,
        )
    for r, run in enumerate(runs):
        _write_metrics(run, history[r])
        run.state.unlink(missing_ok=True)
        prov = run.read_provenance()
        run.write_provenance(prov | {"finished": True, "ended": _now(), "final_epoch": steps})


# ------------------------------------------------------------------ sampling


def _gid(cfg: BRun) -> int:
    """The chain streams' run id, from the run's config hash (as built-in runs)."""
    from grokbasin.llc.trajectory import run_identity

    return run_identity(cfg.run_hash())


def sample_batch(cfgs: list[BRun], root: str | Path) -> int:
    """Estimate every missing (run, checkpoint) λ̂ of the runs in ONE batched SGLD call."""
    from grokbasin.llc.estimate import estimate_llc
    from grokbasin.llc.targets import from_functional, repeat_replicas

    fam = FAMILIES[cfgs[0].family]
    dev = cfgs[0].device
    s = cfgs[0].llc
    h = s.sampler_hash()
    centres: list[tuple[int, int]] = []
    for k, c in enumerate(cfgs):
        run = RunDir(Path(root) / c.run_hash())
        done = sampled_epochs(run, h)
        centres += [(k, e) for e in wanted_epochs(c, run) if e not in done]
    if not centres:
        return 0
    used = sorted({k for k, _ in centres})
    reps = {k: fam.make(cfgs[k], dev, False) for k in used}  # data only: params from disk
    gc = [cfgs[k] for k, _ in centres]
    P = pad_stack(
        [RunDir(Path(root) / cfgs[k].run_hash()).load_checkpoint(e, dev) for k, e in centres]
    )
    P = {k: v.to(fam.dtype) for k, v in P.items()}
    X = pad_stack([{"x": reps[k].x} for k, _ in centres])["x"]
    Y = pad_stack([{"y": reps[k].y} for k, _ in centres])["y"]
    C = s.chains
    target = from_functional(
        fam.forward,
        fam.loss,
        repeat_replicas(P, C),
        X.repeat_interleave(C, 0),
        Y.repeat_interleave(C, 0),
        batch_size=s.batch_size or None,
        per_replica=True,
        aux={"mask": size_mask(gc, dev, fam.dtype).repeat_interleave(C, 0)},
    )
    est = estimate_llc(
        target,
        groups=len(centres),
        chains=C,
        nbetas=[s.nbeta],
        step_size=s.step_size,
        gamma=s.gamma,
        burnin=s.burnin,
        draws=s.draws,
        seed=s.seed,
        group_ids=[[_gid(cfgs[k]), e] for k, e in centres],
        diagnose=False,
    )
    lam = est.llc[:, 0, :]
    init = est.result.init_loss.reshape(len(centres), C)
    mean = est.result.mean_loss.reshape(len(centres), C)
    scfg = json.dumps(s.model_dump(mode="json", exclude={"checkpoints"}), sort_keys=True)
    new: dict[int, list[dict[str, Any]]] = {}
    for g, (k, e) in enumerate(centres):
        new.setdefault(k, []).extend(
            {
                "epoch": e,
                "replica": 0,
                "chain": c,
                "nbeta": s.nbeta,
                "llc": float(lam[g, c]),
                "init_loss": float(init[g, c]),
                "mean_loss": float(mean[g, c]),
                "flags": "",
                "sampler_hash": h,
                "sampler_config": scfg,
            }
            for c in range(C)
        )
    for k, rows in new.items():
        llc_results.merge_write(RunDir(Path(root) / cfgs[k].run_hash()), rows)
    return len(new)


def run_job(job: BJob) -> BJobResult:
    """Train the group's untrained runs as one batch, then sample what is missing."""
    from grokbasin.experiments.paper_b.spec import build_run

    cfgs = [build_run(c) for c in job.runs]
    unique = {c.run_hash(): c for c in cfgs}  # one training per run, whatever its samplers
    # a second process on any of these run directories waits (what it finds is then done)
    with locked((Path(job.root) / h for h in unique), create=True):
        todo = [
            c for c in unique.values() if not RunDir(Path(job.root) / c.run_hash()).is_trained()
        ]
        if todo:
            train_batch(todo, job.root)
        sampled = 0
        by_sampler: dict[str, list[BRun]] = {}
        for c in cfgs:
            by_sampler.setdefault(c.llc.sampler_hash() + c.llc.checkpoints, []).append(c)
        for group in by_sampler.values():
            sampled += sample_batch(group, job.root)
    return BJobResult(len(todo), sampled)


@dataclass
class BRunResult:
    """What one call computed (0 and 0 when everything was already there)."""

    trained: int
    sampled: int

    @property
    def did_nothing(self) -> bool:
        return self.trained == 0 and self.sampled == 0


def run_all(
    cfgs: list[BRun],
    root: str | Path,
    backend: str = "local",
    workers: int = 1,
    progress: bool = False,
) -> BRunResult:
    """Train and sample every run that is not finished under ``root``; reuse everything else."""
    from grokbasin.experiments.backends import run_jobs_with_progress

    jobs = jobs_for(cfgs, root)
    out = run_jobs_with_progress(run_job, jobs, "paper-b", backend, workers, progress=progress)
    return BRunResult(sum(r.trained for r in out), sum(r.sampled for r in out))


def collect(cfgs: list[BRun], root: str | Path) -> list[dict[str, Any]]:
    """One row per (run, sampled checkpoint): config fields, λ̂ mean/std over chains, losses."""
    out = []
    wants = [query.Want(Path(root) / c.run_hash(), c.llc.sampler_hash(), c.llc.nbeta) for c in cfgs]
    for c, rows in zip(cfgs, query.llc_rows(wants), strict=True):  # one query for every run
        run = RunDir(Path(root) / c.run_hash())
        by = {r["epoch"]: r for r in llc_results.llc_summary(rows, c.llc.nbeta)}
        m = {int(r["epoch"]): r for r in metrics_rows(run)}
        base = {
            "run": c.run_hash(),
            "family": c.family,
            "seed": c.seed,
            "size": c.model.size,
            **{k: v for k, v in c.task.model_dump().items() if v is not None and k != "name"},
        }
        nan = float("nan")
        for e in wanted_epochs(c, run):
            out.append(
                base
                | {
                    "epoch": e,
                    "llc": by.get(e, {}).get("llc_mean", nan),
                    "llc_std": by.get(e, {}).get("llc_std", nan),
                    "train_loss": m.get(e, {}).get("train_loss"),
                }
            )
    return out

"""Resumable, deduplicated sweeps: a grid of configs x seeds, trained and sampled in batches.

A sweep file (YAML) holds::

    name: lr-sweep                      # optional, for messages
    base: {task: {p: 23}, model: {width: 64}, train: {epochs: 1000}}
    grid: {train.lr: [1e-4, 1e-3], model.width: [32, 64]}   # product of dotted keys
    points: [{task.p: 11}, {task.p: 13}]                    # each point x each grid cell
    seeds: [0, 1, 2]
    llc: {chains: 2, draws: 100}        # optional: estimate LLC trajectories; `llc.*` keys may
                                        # also appear in grid/points (sampler sweeps)

Each (grid cell, point, seed, lr, weight decay) becomes one single-replica run config, so its
run directory (keyed by the config hash) is shared by every sweep that needs it: adding seeds or
grid values trains only the new runs, and a new sampler setting samples only its new estimates.
Runs that differ only in seed/lr/weight decay/data seed form one *group*, trained as ONE
replica-batched computation (``train_group``) and sampled in one batched ``estimate_runs`` call;
independent groups go to a backend (inline, processes or Ray).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from grokbasin.config import LLCConfig, RunConfig, build_config, load_yaml
from grokbasin.errors import ConfigError
from grokbasin.store.query import Want, checkpoint_epochs, llc_rows
from grokbasin.store.rundir import RunDir

_SWEEP_KEYS = {"name", "base", "grid", "points", "seeds", "llc", "device"}


@dataclass
class Sweep:
    """A parsed sweep file: base config, grid, points, seeds and whether to estimate LLCs."""

    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    seeds: list[int] | None = None
    estimate: bool = False
    name: str = "sweep"


def sweep_from_dict(data: dict[str, Any]) -> Sweep:
    """Validate the sweep's structure (configs are validated in :func:`expand`)."""
    if not isinstance(data, dict):
        raise ConfigError("sweep: top level must be a mapping")
    unknown = set(data) - _SWEEP_KEYS
    if unknown:
        raise ConfigError(f"sweep: unknown keys {sorted(unknown)}; allowed {sorted(_SWEEP_KEYS)}")
    base = json.loads(json.dumps(data.get("base") or {}))
    if not isinstance(base, dict):
        raise ConfigError("sweep.base: must be a mapping of config sections")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError("sweep.grid: must map dotted config keys to non-empty lists")
    points = data.get("points") or [{}]
    if not isinstance(points, list) or any(not isinstance(p, dict) for p in points):
        raise ConfigError("sweep.points: must be a list of mappings of dotted config keys")
    seeds = data.get("seeds")
    if seeds is not None:
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        if not seeds or any(not isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
            raise ConfigError(f"sweep.seeds: must be distinct integers, got {seeds}")
    llc = data.get("llc")
    if isinstance(llc, dict):
        base["llc"] = {**base.get("llc", {}), **llc}
    if "device" in data:
        base["device"] = data["device"]
    keys = list(grid) + [k for p in points for k in p]
    estimate = llc is not False and (
        llc is not None or "llc" in base or any(k.startswith("llc.") for k in keys)
    )
    return Sweep(base, grid, points, seeds, estimate, str(data.get("name", "sweep")))


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep YAML file."""
    return sweep_from_dict(load_yaml(path))


def expand(sweep: Sweep) -> list[RunConfig]:
    """One validated single-replica RunConfig per (grid cell, point, seed, lr, weight decay)."""
    combos = itertools.product(*sweep.grid.values())
    cells = [dict(zip(sweep.grid, vals, strict=True)) for vals in combos]
    out: list[RunConfig] = []
    seen: set[str] = set()
    for cell, point in itertools.product(cells or [{}], sweep.points):
        over = {**cell, **point}
        if sweep.seeds is not None and "train.seeds" not in over:
            over["train.seeds"] = sweep.seeds
        try:
            cfg = build_config(sweep.base, over)
        except ConfigError as e:
            raise ConfigError(f"sweep point {over}: {e}") from None
        for one in split_replicas(cfg):
            key = one.run_hash() + one.llc.sampler_hash() + one.llc.checkpoints
            if key not in seen:
                seen.add(key)
                out.append(one)
    return out


def split_replicas(cfg: RunConfig) -> list[RunConfig]:
    """The config's (seed, lr, weight decay) replicas as one config each."""
    out = []
    for rep in cfg.train.replicas():
        one = {"seeds": [rep["seed"]], "lr": [rep["lr"]], "weight_decay": [rep["weight_decay"]]}
        t = cfg.train.model_copy(update=one)
        try:
            out.append(RunConfig.model_validate({**cfg.model_dump(), "train": t.model_dump()}))
        except ValidationError as e:  # pragma: no cover - the parent config already validated
            raise ConfigError(str(e)) from None
    return out


def group_key(cfg: RunConfig) -> str:
    """Configs with equal keys train as one replica batch (and share shapes for sampling)."""
    t = cfg.train.model_dump(exclude={"seeds", "lr", "weight_decay"})
    task = cfg.task.model_dump(exclude={"data_seed"})
    return json.dumps([task, cfg.model.model_dump(), t, cfg.device], sort_keys=True, default=str)


def group(cfgs: Iterable[RunConfig]) -> list[list[RunConfig]]:
    """Partition configs into batchable groups, keeping first-seen order."""
    groups: dict[str, list[RunConfig]] = {}
    for c in cfgs:
        groups.setdefault(group_key(c), []).append(c)
    return list(groups.values())


# ------------------------------------------------------------------ what exists already


def selected_epochs(run: RunDir, llc: LLCConfig) -> list[int]:
    """Checkpoint epochs an estimate with these settings covers ('all', 'last' or a list)."""
    return checkpoint_epochs(run.checkpoint_epochs(), llc.checkpoints)


def _sampler_states(cfgs: list[RunConfig], runs: list[RunDir]) -> list[str]:
    """'cached' where every selected checkpoint has an estimate under the config's sampler hash
    (at any nβ: a temperature sweep's extra nβ share the hash), else 'todo'; one query for all."""
    trained = [i for i, r in enumerate(runs) if r.is_trained()]
    wants = [Want(runs[i].path, cfgs[i].llc.sampler_hash(), "any") for i in trained]
    states = ["todo"] * len(cfgs)
    for i, rows in zip(trained, llc_rows(wants), strict=True):
        want = selected_epochs(runs[i], cfgs[i].llc)
        if want and set(want) <= {int(r["epoch"]) for r in rows}:
            states[i] = "cached"
    return states


@dataclass
class RunPlan:
    """One run of a sweep: its config, directory, training state and LLC state."""

    cfg: RunConfig
    run: RunDir
    train: str  # "cached" | "resume" | "train"
    llc: str  # "cached" | "todo" | "none"


def plan(root: str | Path, cfgs: list[RunConfig], estimate: bool = True) -> list[RunPlan]:
    """What exists under ``root`` for each config, and what a sweep would still compute."""
    runs = [RunDir(Path(root) / c.run_hash()) for c in cfgs]
    llc = _sampler_states(cfgs, runs) if estimate else ["none"] * len(cfgs)
    out = []
    for c, run, s in zip(cfgs, runs, llc, strict=True):
        t = "cached" if run.is_trained() else ("resume" if run.state.exists() else "train")
        out.append(RunPlan(c, run, t, s))
    return out


# ------------------------------------------------------------------ one group's work


@dataclass
class GroupJob:
    """Picklable unit of work for a backend: train one group, then sample its runs."""

    cfgs: list[dict[str, Any]]  # RunConfig dumps (one replica each)
    root: str
    estimate: bool
    label: str = ""


@dataclass
class GroupResult:
    """Run directories of a job and what it actually did."""

    runs: list[str]
    trained: int  # runs trained or resumed
    sampled: int  # (run, sampler setting) estimates computed


def run_group(job: GroupJob) -> GroupResult:
    """Train the group as one batch, then estimate the missing LLCs per sampler setting."""
    from grokbasin.train.runner import train_group

    cfgs = [RunConfig.model_validate(c) for c in job.cfgs]
    before = plan(job.root, cfgs, job.estimate)
    todo_train = {p.run.path.name for p in before if p.train != "cached"}
    if todo_train:
        unique = {c.run_hash(): c for c in cfgs if c.run_hash() in todo_train}
        train_group(list(unique.values()), job.root, progress=False)
    sampled = 0
    if job.estimate:
        after = plan(job.root, cfgs, True)
        by_sampler: dict[str, list[RunPlan]] = {}
        for p in after:
            if p.llc == "todo":
                key = p.cfg.llc.sampler_hash() + p.cfg.llc.checkpoints
                by_sampler.setdefault(key, []).append(p)
        for plans in by_sampler.values():
            dirs = list({p.run.path.name: p.run.path for p in plans}.values())
            _estimator()(dirs, plans[0].cfg.llc, device=plans[0].cfg.device, progress=False)
            sampled += len(dirs)
    runs = list(dict.fromkeys(str(Path(job.root) / c.run_hash()) for c in cfgs))
    return GroupResult(runs, len(todo_train), sampled)


def _estimator() -> Callable[..., Any]:
    from grokbasin.llc.trajectory import estimate_runs

    return estimate_runs


# ------------------------------------------------------------------ the whole sweep


@dataclass
class SweepResult:
    """Every run of the sweep, with counts of what this invocation computed."""

    plans: list[RunPlan]  # state before this invocation
    runs: list[RunDir]
    trained: int
    sampled: int

    @property
    def did_nothing(self) -> bool:
        return self.trained == 0 and self.sampled == 0


def jobs_for(cfgs: list[RunConfig], root: str | Path, estimate: bool) -> list[GroupJob]:
    """One job per batchable group that still has training or sampling to do."""
    jobs = []
    for g in group(cfgs):
        ps = plan(root, g, estimate)
        if all(p.train == "cached" and p.llc in ("cached", "none") for p in ps):
            continue
        c = g[0]
        label = f"p={c.task.p} {c.model.name} K={c.model.width} ({len(g)} runs)"
        jobs.append(GroupJob([x.model_dump(mode="json") for x in g], str(root), estimate, label))
    return jobs


def preflight_groups(cfgs: list[RunConfig], root: str | Path, estimate: bool) -> None:
    """Refuse, before any group trains, a group whose training or sampling would not fit."""
    from grokbasin.device import resolve
    from grokbasin.llc.trajectory import check_llc_fits
    from grokbasin.train.runner import preflight

    for g in group(cfgs):
        preflight(g, root)
        if estimate:
            check_llc_fits(g[0], resolve(g[0].device), runs=len(g))


def run_configs(
    cfgs: list[RunConfig],
    root: str | Path = "runs",
    estimate: bool = True,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
) -> SweepResult:
    """Train (and sample) every config, reusing what exists; one progress display throughout."""
    from grokbasin.experiments.backends import run_jobs_with_progress

    preflight_groups(cfgs, root, estimate)
    before = plan(root, cfgs, estimate)
    jobs = jobs_for(cfgs, root, estimate)
    results = run_jobs_with_progress(
        run_group, jobs, "sweep", backend, workers, address, progress=progress
    )
    runs = list({p.run.path.name: p.run for p in before}.values())
    return SweepResult(
        before, runs, sum(r.trained for r in results), sum(r.sampled for r in results)
    )


def run_sweep(
    sweep: Sweep | str | Path,
    root: str | Path = "runs",
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
) -> SweepResult:
    """Expand a sweep (object or YAML path) and compute whatever is missing under ``root``."""
    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    return run_configs(expand(sw), root, sw.estimate, backend, workers, address, progress)


__all__ = [
    "GroupJob",
    "GroupResult",
    "RunPlan",
    "Sweep",
    "SweepResult",
    "expand",
    "group",
    "group_key",
    "jobs_for",
    "load_sweep",
    "plan",
    "run_configs",
    "run_group",
    "run_sweep",
    "split_replicas",
    "sweep_from_dict",
]

"""Train configs into their run directories: batched, resumable, and never twice.

``train_group`` trains several run configs that differ only in seeds, learning rates and weight
decays as ONE replica-batched computation; each config still gets its own run directory holding
only its replicas. A member that early-stops is written out and dropped from the batch, so every
run's result is what it would be alone.

Order of writes at each checkpoint: epoch file, metrics, then the resume state. The state is the
commit point: on restart, anything recorded after the state's epoch is discarded and replayed,
which gives identical results because all randomness is keyed by (seed, epoch).

Every file is bound to its run (``store.binding``): a run whose config.yaml was edited is
refused, and one whose files were deleted (a folder recreated mid-train, a lost checkpoint) is
trained again from scratch, with a warning, instead of being taken as finished.

Every run directory is locked (``<run>/.lock``) while it is trained: a second process on the
same run waits, then finds it finished. A replica whose loss stops being finite is recorded as
diverged (metrics column ``diverged``, provenance ``diverged``); a run whose replicas have all
diverged stops there, since NaN parameters never recover.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from grokbasin import provenance
from grokbasin.config import RunConfig, dump_yaml
from grokbasin.device import check_fits, intra_op_threads, resolve
from grokbasin.errors import ConfigError, CorruptFileError
from grokbasin.progress import console, make_progress
from grokbasin.store import binding
from grokbasin.store.rundir import (
    RunDir,
    atomic_write,
    check_out_root,
    locked,
    read_parquet,
    write_parquet,
)
from grokbasin.train import optim
from grokbasin.train.loop import (
    Setup,
    estimate_train_bytes,
    evaluate,
    init_params,
    make_setup,
    steps_per_unit,
    train_epoch,
)


@dataclass
class TrainResult:
    run: RunDir
    status: str  # "trained", "resumed" or "cached"
    final_epoch: int
    diverged: dict[int, int] = field(default_factory=dict)  # replica -> first non-finite epoch


@dataclass
class _Member:
    """One run config inside a batch: its directory, replicas and history."""

    cfg: RunConfig
    run: RunDir
    start_epoch: int = 0
    start_step: int = 0
    rows: list[dict] = field(default_factory=list)
    status: str = "trained"
    prov: dict = field(default_factory=dict)
    diverged: dict[int, int] = field(default_factory=dict)

    @property
    def n_replicas(self) -> int:
        return len(self.cfg.train.replicas())


def _batch_key(cfg: RunConfig) -> str:
    """Configs with equal keys can share one batched training."""
    per_member = {
        "seeds",
        "lr",
        "weight_decay",
        "epochs",
        "checkpoint_every",
        "early_stop",
        "early_stop_patience",
        "early_stop_val_acc",
    }
    t = cfg.train.model_dump(exclude=per_member)
    return repr((cfg.task.model_dump(exclude={"data_seed"}), cfg.model.model_dump(), t, cfg.device))


def train(cfg: RunConfig, root: str | Path = "runs", progress: bool = True) -> TrainResult:
    """Train ``cfg`` under ``root/<run hash>``; returns where and what was done."""
    return train_group([cfg], root, progress)[0]


def train_group(
    cfgs: list[RunConfig], root: str | Path = "runs", progress: bool = True
) -> list[TrainResult]:
    """Train compatible configs as one replica batch; results in the order of ``cfgs``."""
    cfgs = [c.model_copy(update={"device": resolve(c.device)}) for c in cfgs]
    if len({_batch_key(c) for c in cfgs}) > 1:
        raise ConfigError(
            "train_group: configs differ in more than seeds, lr, weight decay, "
            "data seed, epochs, checkpointing or early stopping"
        )
    runs = [RunDir(Path(root) / c.run_hash()) for c in cfgs]
    pending: dict[str, _Member] = {}
    if not all(_trained(run) for run in runs):  # a finished run is final: no lock needed
        preflight(cfgs, root)
        with locked([r.path for r in runs], create=True):
            for cfg, run in zip(cfgs, runs, strict=True):
                if not _trained(run) and run.path.name not in pending:
                    pending[run.path.name] = _open_member(cfg, run)
            by_epoch: dict[int, list[_Member]] = defaultdict(list)
            for m in pending.values():
                by_epoch[m.start_epoch].append(m)
            with intra_op_threads(cfgs[0].device):
                for members in by_epoch.values():
                    _train_batch(members, progress)
    out = []
    for run in runs:
        prov = run.read_provenance()
        status = pending[run.path.name].status if run.path.name in pending else "cached"
        out.append(
            TrainResult(run, status, int(prov.get("final_epoch", -1)), diverged_replicas(prov))
        )
    return out


def preflight(cfgs: list[RunConfig], root: str | Path) -> None:
    """Refuse, before anything is written, an unusable --out or a batch too big for the device."""
    check_out_root(root)
    c = cfgs[0]
    n_rep = sum(len(x.train.replicas()) for x in {x.run_hash(): x for x in cfgs}.values())
    check_fits(
        estimate_train_bytes(c, n_rep),
        resolve(c.device),
        f"training task.p={c.task.p} ({c.task.n_pairs:,} pairs), {c.model.name} "
        f"width={c.model.width}, {n_rep} replicas",
        "use a smaller task.p, model size or fewer replicas",
    )


def repair(run: RunDir, progress: bool = True) -> None:
    """Train a damaged or unfinished run again from its own config.yaml (resumes if intact)."""
    train(binding.repair_config(run), run.path.parent, progress)


def _trained(run: RunDir) -> bool:
    """Finished and intact; a config.yaml edited since is refused (binding.stored_config)."""
    if run.config.exists():
        binding.stored_config(run)
    return run.is_trained()


def _clear_if_damaged(run: RunDir) -> None:
    """Start a run over whose training files were lost (deleted folder, missing checkpoint)."""
    missing = run.missing_files() if run.path.exists() else []
    if run.read_provenance() and missing:
        console.print(
            f"[yellow]warning:[/yellow] {run.path} lacks {'; '.join(missing)}: "
            "training it again from scratch",
            highlight=False,
            soft_wrap=True,
        )
        binding.reset(run)


def diverged_replicas(prov: dict) -> dict[int, int]:
    """Replica -> first epoch with a non-finite loss, as recorded in provenance."""
    return {int(k): int(v) for k, v in (prov.get("diverged") or {}).items()}


def _open_member(cfg: RunConfig, run: RunDir) -> _Member:
    """A fresh member, or one resumed from its last committed checkpoint."""
    m = _Member(cfg, run)
    _clear_if_damaged(run)
    if run.state.exists():
        meta = run.load_tensors(run.state)[1]
        run.check_bound(run.state, meta)
        m.start_epoch, m.start_step, m.status = int(meta["epoch"]), int(meta["step"]), "resumed"
        if not run.metrics.exists():
            raise CorruptFileError(f"{run.metrics}: missing although {run.state} exists")
        m.rows = [r for r in read_parquet(run.metrics).to_pylist() if r["epoch"] <= m.start_epoch]
        for r in m.rows:  # metrics written before the column existed
            if r.get("diverged") is None:
                r["diverged"] = not all(math.isfinite(r[k]) for k in ("train_loss", "val_loss"))
        m.prov = run.read_provenance()
        m.diverged = _first_diverged(m.rows)
        for e in run.checkpoint_epochs():
            if e > m.start_epoch:
                run.checkpoint(e).unlink()
    return m


def _train_batch(members: list[_Member], progress: bool) -> None:
    """Train members that stand at the same epoch as one batch until each is finished."""
    base = members[0].cfg
    reps = [r for m in members for r in m.cfg.train.replicas()]
    data_seeds = [
        m.cfg.task.data_seed if m.cfg.task.data_seed is not None else int(r["seed"])
        for m in members
        for r in m.cfg.train.replicas()
    ]
    s = make_setup(base, reps, data_seeds)
    params = init_params(s)
    state = optim.init_state(base.train.optimizer, params)
    epoch, step = members[0].start_epoch, members[0].start_step
    offsets = _offsets(members)
    for m, (lo, hi) in zip(members, offsets, strict=True):
        if m.status == "resumed":
            _load_member_state(m, params, state, lo, hi, s)
        else:
            _create(m, s, params, state, lo, hi)
    steps_per_epoch = steps_per_unit(s)
    total = max(m.cfg.train.epochs for m in members)
    with make_progress(progress) as bar:
        task = bar.add_task(_acc_text(members), total=total, completed=epoch, stage="train")
        while members:
            done = [
                i
                for i, m in enumerate(members)
                if epoch >= m.cfg.train.epochs or _should_stop(m) or _all_diverged(m)
            ]
            if done:
                for i in done:
                    _finish(members[i], epoch)
                keep = [i for i in range(len(members)) if i not in done]
                idx = [r for i in keep for r in range(*_offsets(members)[i])]
                members = [members[i] for i in keep]
                if not members:
                    break
                s = s.subset(idx)
                params = {k: v[idx] for k, v in params.items()}
                state = {k: (v if k == "step" else v[idx]) for k, v in state.items()}
            params, state = train_epoch(s, params, state, epoch)
            epoch, step = epoch + 1, step + steps_per_epoch
            due = [_due(m, epoch) for m in members]
            if any(due):
                ev = evaluate(s, params)
                for m, (lo, hi), d in zip(members, _offsets(members), due, strict=True):
                    if d:
                        _checkpoint(m, s, params, state, ev, lo, hi, epoch, step)
                bar.update(task, description=_acc_text(members))
            bar.update(task, completed=epoch)


def _due(m: _Member, epoch: int) -> bool:
    t = m.cfg.train
    return epoch % t.checkpoint_every == 0 or epoch == t.epochs


def _offsets(members: list[_Member]) -> list[tuple[int, int]]:
    out, lo = [], 0
    for m in members:
        out.append((lo, lo + m.n_replicas))
        lo += m.n_replicas
    return out


def _create(m: _Member, s: Setup, params, state, lo: int, hi: int) -> None:
    """Write a fresh member's config, provenance and epoch-0 checkpoint."""
    m.run.path.mkdir(parents=True, exist_ok=True)
    cfg = m.cfg.model_copy(update={"llc": type(m.cfg.llc)()})
    atomic_write(m.run.config, dump_yaml(cfg).encode())
    reps = m.cfg.train.replicas()
    m.prov = provenance.collect(
        m.cfg.device,
        seeds=m.cfg.train.seeds,
        replicas=reps,
        finished=False,
        run_hash=m.cfg.run_hash(),
    )
    m.run.write_provenance(m.prov)
    _checkpoint(m, s, params, state, evaluate(s, params), lo, hi, 0, 0)


def _load_member_state(m: _Member, params, state, lo: int, hi: int, s: Setup) -> None:
    """Overwrite the member's replica slice with its saved params and optimiser state."""
    tensors, _ = m.run.load_tensors(m.run.state, params[next(iter(params))].device)
    for k, v in params.items():
        saved = tensors.get(f"param.{k}")
        if saved is None or saved.shape != v[lo:hi].shape:
            raise CorruptFileError(f"{m.run.state}: parameter {k!r} does not match the config")
        v[lo:hi] = saved
    for k, v in state.items():
        if k == "step":
            state[k] = tensors["opt.step"].cpu()
        else:
            v[lo:hi] = tensors[f"opt.{k}"]


def _checkpoint(
    m: _Member, s: Setup, params, state, ev, lo: int, hi: int, epoch: int, step: int
) -> None:
    reps = s.replicas[lo:hi]
    vals = {k: v[lo:hi].tolist() for k, v in ev.items()}
    new = [
        {"epoch": epoch, "step": step, "replica": r, **rep, **{k: vals[k][r] for k in vals}}
        for r, rep in enumerate(reps)
    ]
    for row in new:
        row["diverged"] = not all(math.isfinite(row[k]) for k in ("train_loss", "val_loss"))
        if row["diverged"]:
            m.diverged.setdefault(row["replica"], epoch)
    m.rows.extend(new)
    mine = {k: v[lo:hi] for k, v in params.items()}
    meta = {"epoch": epoch, "step": step}
    m.run.save_checkpoint(epoch, mine, meta)
    write_parquet(m.run.metrics, m.rows)
    opt = {f"opt.{k}": (v if k == "step" else v[lo:hi]) for k, v in state.items()}
    state_meta = meta | {"run": m.run.identity()}
    m.run.save_tensors(m.run.state, {f"param.{k}": v for k, v in mine.items()} | opt, state_meta)


def _finish(m: _Member, epoch: int) -> None:
    extra = {"diverged": {str(r): e for r, e in sorted(m.diverged.items())}} if m.diverged else {}
    m.run.write_provenance(
        {**m.prov, "finished": True, "final_epoch": epoch, "ended": provenance.now(), **extra}
    )


def _first_diverged(rows: list[dict]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in rows:
        if r.get("diverged"):
            out.setdefault(int(r["replica"]), int(r["epoch"]))
    return out


def _all_diverged(m: _Member) -> bool:
    """Every replica's loss is non-finite: NaN parameters never recover, so stop training."""
    return len(m.diverged) == m.n_replicas


def _should_stop(m: _Member) -> bool:
    """SPEC §3.9 early stop: every replica had ``patience`` consecutive evals above threshold."""
    t = m.cfg.train
    if not t.early_stop:
        return False
    need = m.n_replicas * t.early_stop_patience
    recent = m.rows[-need:]
    return len(recent) == need and all(r["val_acc"] >= t.early_stop_val_acc for r in recent)


def _acc_text(members: list[_Member]) -> str:
    last = [r for m in members for r in m.rows[-m.n_replicas :]]
    if not last:
        return ""
    tr = sum(r["train_acc"] for r in last) / len(last)
    va = sum(r["val_acc"] for r in last) / len(last)
    text = f"train acc {tr:.3f}  val acc {va:.3f}"
    bad = sum(len(m.diverged) for m in members)
    if bad:
        text += f"  [red]diverged: {bad}/{len(last)} replicas (loss not finite)[/red]"
    return text

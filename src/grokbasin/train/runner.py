"""Train a config into its run directory, resuming a killed run and skipping a finished one.

Order of writes at each checkpoint: epoch file, metrics, then the resume state. The state is the
commit point: on restart, anything recorded after the state's epoch is discarded and replayed,
which gives bit-identical results because all randomness is keyed by (seed, epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from grokbasin import provenance
from grokbasin.config import RunConfig, dump_yaml
from grokbasin.device import resolve
from grokbasin.errors import CorruptFileError
from grokbasin.progress import make_progress
from grokbasin.store.rundir import RunDir, read_parquet, write_parquet
from grokbasin.train import optim
from grokbasin.train.loop import Setup, evaluate, init_params, make_setup, train_epoch


@dataclass
class TrainResult:
    run: RunDir
    status: str  # "trained", "resumed" or "cached"
    final_epoch: int


def _metric_rows(s: Setup, epoch: int, step: int, ev: dict[str, torch.Tensor]) -> list[dict]:
    vals = {k: v.tolist() for k, v in ev.items()}
    return [
        {"epoch": epoch, "step": step, "replica": r, **rep, **{k: vals[k][r] for k in vals}}
        for r, rep in enumerate(s.replicas)
    ]


def _should_stop(s: Setup, rows: list[dict]) -> bool:
    """SPEC §3.9 early stop: every replica had ``patience`` consecutive evals above threshold."""
    t = s.cfg.train
    if not t.early_stop:
        return False
    R = len(s.replicas)
    recent = rows[-R * t.early_stop_patience :]
    if len(recent) < R * t.early_stop_patience:
        return False
    return all(row["val_acc"] >= t.early_stop_val_acc for row in recent)


def _resume(run: RunDir, s: Setup, dev: str):
    state_t, meta = run.load_tensors(run.state, dev)
    params = {k.removeprefix("param."): v for k, v in state_t.items() if k.startswith("param.")}
    opt = {k.removeprefix("opt."): v for k, v in state_t.items() if k.startswith("opt.")}
    opt["step"] = opt["step"].cpu()
    epoch, step = int(meta["epoch"]), int(meta["step"])
    if not run.metrics.exists():
        raise CorruptFileError(f"{run.metrics}: missing although {run.state} exists")
    rows = [r for r in read_parquet(run.metrics).to_pylist() if r["epoch"] <= epoch]
    for e in run.checkpoint_epochs():
        if e > epoch:
            run.checkpoint(e).unlink()
    expected = {k: v.shape for k, v in init_params(s).items()}
    if {k: v.shape for k, v in params.items()} != expected:
        raise CorruptFileError(f"{run.state}: parameter shapes do not match the config")
    return params, opt, epoch, step, rows


def train(cfg: RunConfig, root: str | Path = "runs", progress: bool = True) -> TrainResult:
    """Train ``cfg`` under ``root/<run hash>``; returns where and what was done."""
    dev = resolve(cfg.device)
    cfg = cfg.model_copy(update={"device": dev})
    run = RunDir(Path(root) / cfg.run_hash())
    if run.is_trained():
        return TrainResult(run, "cached", int(run.read_provenance().get("final_epoch", -1)))
    s = make_setup(cfg)
    t = cfg.train
    if run.state.exists():
        params, state, epoch, step, rows = _resume(run, s, dev)
        status, prov = "resumed", run.read_provenance() or provenance.collect(dev)
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        from grokbasin.store.rundir import atomic_write

        atomic_write(run.config, dump_yaml(cfg.model_copy(update={"llc": type(cfg.llc)()})).encode())
        prov = provenance.collect(dev, seeds=t.seeds, replicas=s.replicas, finished=False)
        run.write_provenance(prov)
        params, epoch, step, status = init_params(s), 0, 0, "trained"
        state = optim.init_state(t.optimizer, params)
        rows = []
        _checkpoint(run, s, params, state, 0, 0, rows)

    steps_per_epoch = -(-s.task.n_train // s.batch_size)
    with make_progress(progress) as bar:
        task = bar.add_task(_acc_text(rows, len(s.replicas)), total=t.epochs, completed=epoch, stage="train")
        while epoch < t.epochs and not _should_stop(s, rows):
            params, state = train_epoch(s, params, state, epoch)
            epoch, step = epoch + 1, step + steps_per_epoch
            if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
                _checkpoint(run, s, params, state, epoch, step, rows)
                bar.update(task, description=_acc_text(rows, len(s.replicas)))
            bar.update(task, completed=epoch)
        if epoch % t.checkpoint_every and epoch != t.epochs:  # early stop between checkpoints
            _checkpoint(run, s, params, state, epoch, step, rows)
    run.write_provenance({**prov, "finished": True, "final_epoch": epoch, "ended": provenance.now()})
    return TrainResult(run, status, epoch)


def _checkpoint(run: RunDir, s: Setup, params, state, epoch: int, step: int, rows: list[dict]) -> None:
    ev = evaluate(s, params)
    rows.extend(_metric_rows(s, epoch, step, ev))
    meta = {"epoch": epoch, "step": step}
    run.save_tensors(run.checkpoint(epoch), params, meta)
    write_parquet(run.metrics, rows)
    tensors = {f"param.{k}": v for k, v in params.items()} | {f"opt.{k}": v for k, v in state.items()}
    run.save_tensors(run.state, tensors, meta)


def _acc_text(rows: list[dict], R: int) -> str:
    if not rows:
        return ""
    last = rows[-R:]
    tr = sum(r["train_acc"] for r in last) / R
    va = sum(r["val_acc"] for r in last) / R
    return f"train acc {tr:.3f}  val acc {va:.3f}"

"""LLC trajectories of a user's own model and saved checkpoints, all sampled in one batched call.

:func:`trajectory` stacks every checkpoint's parameters along the replica axis (checkpoints ×
nβ × chains, the estimator's group layout) and samples them with ``from_module`` (``torch.func``
``vmap`` + ``grad``) and ``estimate_llc``: the same sampler, diagnostics, health flags and nβ
options as built-in runs. With ``out`` it writes a run directory ``out/<input hash>/`` in the
usual store layout (config.yaml, provenance.json, llc.parquet, metrics.parquet, llc_traces/,
figures/trajectory.png, report.html) plus external.json, which says how to rebuild the inputs
so ``grokbasin llc estimate|calibrate RUN_DIR`` work on it. Rows are keyed by (sampler hash,
step) as in built-in runs: a rerun samples only the steps that lack rows, so a finished rerun
does no work, and a killed one resumes (writes are atomic; chains depend only on (seed, input
hash, step, chain), so a resumed run gives the same numbers).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import yaml

from grokbasin import provenance
from grokbasin.config import LLCConfig
from grokbasin.errors import ConfigError
from grokbasin.llc import health_traces
from grokbasin.llc.estimate import Estimate
from grokbasin.llc.external import inputs as inp
from grokbasin.llc.external.inputs import SPEC_FILE
from grokbasin.llc.external.report import write_report
from grokbasin.llc.targets import Target, from_module
from grokbasin.llc.trajectory import (
    check_sampler_fits,
    chunk_replicas,
    chunks,
    group_rows,
    nbeta_values,
    run_identity,
    sample_with_progress,
    variant_labels,
)
from grokbasin.store import llc_results
from grokbasin.store.llc_results import llc_summary
from grokbasin.store.query import Want, llc_rows
from grokbasin.store.rundir import (
    LOCK_NAME,
    RunDir,
    atomic_write,
    check_out_root,
    read_parquet,
    write_parquet,
)

_KEY_VERSION = "grokbasin-external-v1"


@dataclass
class TrajectoryResult:
    """The tidy table (one row per checkpoint × nβ × chain) and what the call did."""

    table: pa.Table
    run_dir: Path | None = None
    computed: list[int] = field(default_factory=list)  # steps sampled now
    cached: list[int] = field(default_factory=list)  # steps that already had rows
    nbeta: float | None = None  # the main nβ (the others are temperature-sweep extras)
    restricted: dict[str, list[int]] = field(default_factory=dict)  # restriction -> sampled now

    def to_pylist(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()

    def summary(self, nbeta: float | None = None) -> list[dict[str, Any]]:
        """Mean and std of λ̂ over chains per step, at ``nbeta`` (default: the main nβ): the one
        ``llc_summary`` of every run, keyed by step (the checkpoint file's number)."""
        rows = llc_summary(self.table.to_pylist(), nbeta or self.nbeta)
        return [{"step": r["epoch"], **{k: v for k, v in r.items() if k != "epoch"}} for r in rows]


def sampler_config(llc: LLCConfig | dict | None, batch_hint: int | None, **kw: Any) -> LLCConfig:
    """LLCConfig from a config, a dict and/or keyword settings (a DataLoader's batch by default)."""
    base = llc.model_dump() if isinstance(llc, LLCConfig) else dict(llc or {})
    if batch_hint and "batch_size" not in base and "batch_size" not in kw:
        base["batch_size"] = batch_hint
    from pydantic import ValidationError

    from grokbasin.config import format_validation_error

    try:
        cfg = LLCConfig.model_validate({**base, **kw})
    except ValidationError as e:
        raise ConfigError("llc." + format_validation_error(e)) from None
    if cfg.data != "train":
        raise ConfigError(
            f"llc.data = {cfg.data!r}: the data-refined LLC by subset name is for built-in runs; "
            "for your own model give the subset as the data (X, Y) to sample on"
        )
    return cfg


def prepare(
    model: torch.nn.Module | str,
    checkpoints: str | Path | Sequence[Any],
    loss_fn: Callable | str,
    data: Any,
    *,
    steps: Sequence[int] | None = None,
    val_data: Any = None,
    device: str = "cpu",
    max_bytes: int | None = None,
) -> inp.Inputs:
    """Load and validate every input (nothing is written); see :mod:`.inputs` for the forms."""
    module, model_spec = inp.resolve_model(model)
    loss, loss_spec = inp.resolve_loss(loss_fn)
    X, Y, val, hint, data_spec = inp.resolve_data(data, max_bytes)
    val_spec = "data" if val is not None else None
    if val_data is not None:
        Xv, Yv, _, _, _ = inp.resolve_data(val_data, max_bytes)
        val, val_spec = (Xv, Yv), "object"
    st, labels, sds, paths = inp.resolve_checkpoints(checkpoints, steps)
    for sd, lab in zip(sds, labels, strict=True):
        inp.check_state_dict(sd, module, lab)
    pnames = [k for k, _ in module.named_parameters()]
    all_pnames = {k for k, _ in module.named_parameters(remove_duplicate=False)}
    for k in sorted(set(sds[0]) - all_pnames):
        if any(not torch.equal(sd[k], sds[0][k]) for sd in sds[1:]):
            raise ConfigError(
                f"--checkpoints: buffer {k!r} differs between checkpoints; all checkpoints are "
                "sampled with one set of buffers (BatchNorm running statistics are not supported)"
            )
    module.load_state_dict(sds[0])
    module.to(device).eval()
    dtypes = {k: v.dtype for k, v in module.named_parameters()}
    params = [{k: sd[k].to(dtypes[k]) for k in pnames} for sd in sds]
    dev = torch.device(device)
    out = inp.Inputs(
        module,
        loss,
        X.to(dev),
        Y.to(dev),
        st,
        labels,
        params,
        None if val is None else (val[0].to(dev), val[1].to(dev)),
        hint,
        {
            "model": model_spec,
            "loss": loss_spec,
            "data": data_spec,
            "val": val_spec,
            "checkpoints": paths,
        },
    )
    _probe(out, dev)
    out.key = input_key(out, sds)
    return out


def _probe(x: inp.Inputs, dev: torch.device) -> None:
    """One loss and gradient on two samples through the batched path: user errors surface here."""
    p = {k: v[None].to(dev) for k, v in x.params[0].items()}
    try:
        target = from_module(x.model, x.loss_fn, x.X[:2], x.Y[:2], replicas=1, params0=p)
        val, _ = target.loss_and_grad(p, torch.arange(2, device=dev)[None])
    except Exception as e:  # the user's model/loss/data: one line, not a traceback
        raise ConfigError(
            f"--model/--loss/--data: loss_fn(model(X[:2]), Y[:2]) failed under torch.func: "
            f"{inp._one_line(e)}"
        ) from None
    if val.numel() != 1:
        raise ConfigError(f"--loss: must return one (mean) number per batch, got {val.shape}")
    if not bool(torch.isfinite(val).all()):
        raise ConfigError("--loss: not finite at the first checkpoint on the first samples")


def input_key(x: inp.Inputs, sds: list[dict[str, torch.Tensor]]) -> str:
    """Hash of model, loss, data and checkpoints (everything but the sampler settings)."""
    h = hashlib.sha256(_KEY_VERSION.encode())
    h.update(f"{type(x.model).__module__}.{type(x.model).__qualname__}\n{x.model!r}".encode())
    h.update(inp.callable_identity(x.loss_fn).encode())
    inp.tensor_digest(h, {"X": x.X, "Y": x.Y})
    if x.val is not None:
        inp.tensor_digest(h, {"X_val": x.val[0], "Y_val": x.val[1]})
    for step, sd in zip(x.steps, sds, strict=True):
        h.update(f"step {step}".encode())
        inp.tensor_digest(h, sd)
    return h.hexdigest()[:10]


def module_target(
    model: torch.nn.Module,
    loss_fn: Callable,
    X: torch.Tensor,
    Y: torch.Tensor,
    batch_size: int | None,
    params0: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor] | None = None,
) -> Target:
    """``from_module`` over replicas ``params0`` [R, ...] (positional, as this package calls it)."""
    R = next(iter(params0.values())).shape[0]
    return from_module(
        model, loss_fn, X, Y, replicas=R, batch_size=batch_size, params0=params0, masks=masks
    )


def input_masks(x: inp.Inputs, llc_cfg: LLCConfig) -> dict[str, dict[str, torch.Tensor]]:
    """The restrictions' masks over the user's parameters (heads of nn.MultiheadAttention);
    a pattern that names nothing is a ConfigError before anything is sampled or written."""
    from grokbasin.llc.restrict import module_heads, restriction_masks

    shapes = {k: tuple(v.shape) for k, v in x.params[0].items()}
    return restriction_masks(shapes, llc_cfg.restrict, module_heads(x.model))


def _group_id(key: str) -> int:
    """The chain streams' run id: from the input hash (content), as built-in runs' config hash."""
    return run_identity(key)


def sample_steps(
    x: inp.Inputs,
    llc_cfg: LLCConfig,
    idx: list[int],
    progress: bool,
    which: list[int] | None = None,
) -> tuple[Estimate, list[float]]:
    """One sampler call over checkpoints ``idx`` × nβ × chains; the estimate and its nβ list.

    ``which[g]``: the variant of group g (index into ``llc_cfg.variants()``; default all 0,
    unrestricted). Variants of one checkpoint share its chain streams.
    """
    nbetas = nbeta_values(llc_cfg, x.n)
    G, B, C = len(idx), len(nbetas), llc_cfg.chains
    dev = x.X.device
    p0 = {k: torch.stack([x.params[i][k] for i in idx]).to(dev) for k in x.params[0]}
    p_rep = {k: v.repeat_interleave(B * C, 0).contiguous() for k, v in p0.items()}
    masks = None
    if which is not None and any(which):  # only restricted work carries masks
        from grokbasin.llc.restrict import replica_masks

        per = input_masks(x, llc_cfg)
        variants = [None] + [per[name] for name, _ in llc_cfg.variants()[1:]]
        shapes = {k: tuple(v.shape) for k, v in x.params[0].items()}
        which_rep = torch.tensor(which).repeat_interleave(B * C)
        masks = replica_masks(shapes, variants, which_rep, dev)
    target = module_target(x.model, x.loss_fn, x.X, x.Y, min(llc_cfg.batch_size, x.n), p_rep, masks)
    ids = [[_group_id(x.key), x.steps[i]] for i in idx]
    label = f"{G} checkpoints × {C} chains × {B} nβ"
    return sample_with_progress(target, llc_cfg, G, nbetas, ids, label, progress), nbetas


def estimate_rows(
    est: Estimate,
    x: inp.Inputs,
    idx: list[int],
    llc_cfg: LLCConfig,
    which: list[int] | None = None,
) -> list[dict[str, Any]]:
    """llc.parquet rows (built-in columns plus ``checkpoint``) from a grouped estimate; group g
    is variant ``which[g]`` of ``llc_cfg.variants()`` (default: unrestricted)."""
    labels = variant_labels(llc_cfg)
    which = which or [0] * len(idx)
    return [
        {
            "epoch": int(x.steps[idx[g]]),
            "replica": 0,
            **row,
            **labels[which[g]],
            "checkpoint": x.labels[idx[g]],
        }
        for g, row in group_rows(est, llc_cfg, llc_cfg.sampler_hash())
    ]


def checkpoint_losses(x: inp.Inputs, idx: list[int], est: Estimate) -> list[dict[str, Any]]:
    """metrics.parquet rows: full training (and validation) loss at each checkpoint."""
    train = est._gbc(est.result.full_init_loss)[:, 0, 0]
    val = [float("nan")] * len(idx)
    if x.val is not None:
        dev = x.X.device
        p0 = {k: torch.stack([x.params[i][k] for i in idx]).to(dev) for k in x.params[0]}
        t = module_target(x.model, x.loss_fn, x.val[0], x.val[1], None, p0)
        with torch.no_grad():
            val = [float(v) for v in t.full_loss(p0)]
    nan = float("nan")
    return [
        {
            "epoch": int(x.steps[i]),
            "step": int(x.steps[i]),
            "replica": 0,
            "train_loss": float(train[g]),
            "val_loss": val[g],
            "train_acc": nan,
            "val_acc": nan,
        }
        for g, i in enumerate(idx)
        if i not in idx[:g]  # a checkpoint sampled under several restrictions: one row
    ]


def select_steps(steps: list[int], spec: str) -> list[int]:
    """Indices of the steps named by 'all', 'last' or 'S1,S2' (llc.checkpoints)."""
    if spec == "all":
        return list(range(len(steps)))
    if spec == "last":
        return [len(steps) - 1]
    try:
        want = sorted({int(s) for s in spec.replace(" ", "").split(",") if s})
    except ValueError:
        raise ConfigError(
            f"llc.checkpoints: {spec!r} is not 'all', 'last' or comma-separated steps"
        ) from None
    missing = [s for s in want if s not in steps]
    if missing:
        raise ConfigError(f"llc.checkpoints: no checkpoint for steps {missing}; have {steps}")
    return [steps.index(s) for s in want]


def trajectory(
    model: torch.nn.Module | str,
    checkpoints: str | Path | Sequence[Any],
    loss_fn: Callable | str,
    data: Any,
    *,
    llc: LLCConfig | dict | None = None,
    out: str | Path | None = None,
    steps: Sequence[int] | None = None,
    val_data: Any = None,
    device: str = "cpu",
    max_bytes: int | None = None,
    progress: bool = False,
    **sampler: Any,
) -> TrajectoryResult:
    """λ̂ at every checkpoint of a user's own run: all checkpoints × chains in one batched call.

    ``model``: an nn.Module (its architecture; the weights come from the checkpoints) or
    'FILE.py:factory'. ``checkpoints``: state_dicts or paths (.pt/.pth/.safetensors), a folder
    or a glob; steps default to the last number in each file name (the index for state_dicts).
    ``loss_fn(pred, y)``: a mean loss, or 'mse' | 'cross_entropy' | 'FILE.py:fn'. ``data``:
    (X, Y), a Dataset, a DataLoader (its batch size becomes the SGLD batch) or 'DATA.pt';
    materialised in memory, refused above ``max_bytes`` (default: half the free memory).
    Sampler settings: ``llc`` (an LLCConfig or dict) and/or keywords such as chains=8,
    step_size=1e-3, nbeta='n_over_log_n', nbetas=[...] (temperature sweep). With ``out`` the
    results go to the run directory out/<input hash>/ and steps already estimated are reused.
    """
    x = prepare(
        model, checkpoints, loss_fn, data, steps=steps, val_data=val_data, device=device,
        max_bytes=max_bytes,
    )  # fmt: skip
    llc_cfg = sampler_config(llc, x.batch_hint, **sampler)
    if llc_cfg.restrict:
        input_masks(x, llc_cfg)  # a bad pattern stops here, before any sampling
    if out is None:
        sel = select_steps(x.steps, llc_cfg.checkpoints)
        V = len(llc_cfg.variants())
        idx, which = [i for _ in range(V) for i in sel], [v for v in range(V) for _ in sel]
        est, _ = sample_steps(x, llc_cfg, idx, progress, which)
        table = llc_results.to_table(estimate_rows(est, x, idx, llc_cfg, which))
        nb = llc_cfg.resolve_nbeta(x.n)
        done = [x.steps[i] for i in sel]
        restricted = {name: done for name in llc_cfg.restrict}
        return TrajectoryResult(table, None, done, [], nb, restricted)
    return estimate_into(RunDir(Path(out) / x.key), x, llc_cfg, device, progress)


def estimate_into(
    run: RunDir, x: inp.Inputs, llc_cfg: LLCConfig, device: str = "cpu", progress: bool = False
) -> TrajectoryResult:
    """Sample the selected steps that lack rows for this sampler in ``run``; write and report.

    Holds the run's lock from reading what exists to the last write, so concurrent processes
    on one ``--out`` give the sequential result; a run folder this call made and left without
    results (an error, Ctrl-C before the first chunk finished) is removed again.
    """
    check_out_root(run.path.parent)
    created = not run.path.exists()
    try:
        with run.lock(create=True):
            return _estimate_locked(run, x, llc_cfg, device, progress)
    except BaseException:
        if created:
            _drop_if_empty(run)
        raise


def _drop_if_empty(run: RunDir) -> None:
    """Remove a run folder that holds nothing but its lock and temporaries."""
    left = [p for p in run.path.iterdir() if p.name != LOCK_NAME and not p.name.endswith(".tmp")]
    if not left:
        shutil.rmtree(run.path, ignore_errors=True)


def _estimate_locked(
    run: RunDir, x: inp.Inputs, llc_cfg: LLCConfig, device: str, progress: bool
) -> TrajectoryResult:
    """:func:`estimate_into` with the run's lock held: finished chunks are written at once."""
    if llc_cfg.restrict:
        input_masks(x, llc_cfg)  # a pattern that names nothing: refused before any work
    variants = llc_cfg.variants()
    idx = select_steps(x.steps, llc_cfg.checkpoints)
    have = run.path.exists()
    done = [llc_results.done_epochs(run, h) if have else set() for _, h in variants]
    work = [(i, v) for v in range(len(variants)) for i in idx if x.steps[i] not in done[v]]
    result = TrajectoryResult(
        pa.table({}),
        run.path,
        [x.steps[i] for i in idx if x.steps[i] not in done[0]],
        [x.steps[i] for i in idx if x.steps[i] in done[0]],
    )
    result.restricted = {
        name: [x.steps[i] for i in idx if x.steps[i] not in d]
        for (name, _), d in zip(variants[1:], done[1:], strict=True)
    }
    wanted = {x.steps[i] for i in idx}
    copies = len(nbeta_values(llc_cfg, x.n)) * llc_cfg.chains
    parts = chunks([copies] * len(work), chunk_replicas(device))
    if work:
        check_fits_external(x, llc_cfg, max(len(p) for p in parts) * copies, device)
    for k, part in enumerate(parts):
        ids, which = [work[i][0] for i in part], [work[i][1] for i in part]
        est, nbetas = sample_steps(x, llc_cfg, ids, progress, which)
        if k == 0:  # only now: a failed first call leaves no half-made run folder
            _write_inputs(run, x, llc_cfg, device)
        _write_chunk(run, x, llc_cfg, ids, est, nbetas, which)
    if work:
        write_report(run, llc_cfg, x.n)
        _finish(run, x, device)
    elif not run.report.exists():
        write_report(run, llc_cfg, x.n)
    wants = [Want(run.path, h, "any") for _, h in variants]
    mine = [r for rs in llc_rows(wants) for r in rs if int(r["epoch"]) in wanted]
    mine.sort(key=lambda r: (r.get("restriction") or "", r["epoch"], r["nbeta"], r["chain"]))
    result.table = llc_results.to_table(mine)
    return result


def check_fits_external(x: inp.Inputs, llc_cfg: LLCConfig, replicas: int, device: str) -> None:
    """Refuse a sampler call of ``replicas`` copies of the model that the device cannot hold."""
    act = min(llc_cfg.batch_size, x.n) * (x.X[0].numel() + x.Y[0].numel())
    check_sampler_fits(replicas, x.n_params, act, device, "LLC sampling")


def _write_chunk(
    run: RunDir,
    x: inp.Inputs,
    llc_cfg: LLCConfig,
    idx: list[int],
    est: Estimate,
    nbetas: list[float],
    which: list[int] | None = None,
) -> None:
    """Merge the rows (through the one writer, ``llc_results.merge_write``), traces and losses
    of checkpoints ``idx`` (group g of variant ``which[g]``) into the run's files."""
    which = which or [0] * len(idx)
    llc_results.merge_write(run, estimate_rows(est, x, idx, llc_cfg, which))
    for v, (_, h) in enumerate(llc_cfg.variants()):
        gs = [g for g, w in enumerate(which) if w == v]
        if gs:
            steps = [x.steps[idx[g]] for g in gs]
            _write_traces(run, est, gs, steps, nbetas, h, llc_cfg.burnin)
    _merge_metrics(run, checkpoint_losses(x, idx, est))


def _write_inputs(run: RunDir, x: inp.Inputs, llc_cfg: LLCConfig, device: str) -> None:
    """config.yaml (the `runs` view reads task/model/train), external.json and provenance."""
    cfg = {
        "kind": "external",
        "task": {
            "name": "external",
            "p": None,
            "n": x.n,
            "n_val": None if x.val is None else int(x.val[0].shape[0]),
            "x_shape": list(x.X.shape[1:]),
            "y_shape": list(x.Y.shape[1:]),
            "data": x.spec["data"],
        },
        "model": {
            "name": type(x.model).__name__,
            "width": None,
            "parameters": x.n_params,
            "factory": x.spec["model"],
        },
        "train": {
            "loss": x.spec["loss"] or getattr(x.loss_fn, "__name__", "custom"),
            "seeds": None,
            "lr": None,
            "weight_decay": None,
        },
        "llc": llc_cfg.model_dump(mode="json"),
        "device": device,
    }
    atomic_write(run.config, yaml.safe_dump(cfg, sort_keys=False).encode())
    spec = {**x.spec, "key": x.key, "steps": x.steps, "labels": x.labels}
    atomic_write(run.path / SPEC_FILE, json.dumps(spec, indent=2).encode())
    prov = run.read_provenance() or provenance.collect(device, kind="external")
    run.write_provenance({**prov, "finished": False})


def _finish(run: RunDir, x: inp.Inputs, device: str) -> None:
    prov = run.read_provenance()
    run.write_provenance(
        {**prov, "finished": True, "final_epoch": x.steps[-1], "ended": provenance.now()}
    )


def _write_traces(
    run: RunDir,
    est: Estimate,
    groups: list[int],
    steps: list[int],
    nbetas: list[float],
    shash: str,
    burnin: int,
) -> None:
    traces = est._gbc(est.result.traces)  # [G, B, C, D]
    tpath = run.path / "llc_traces" / f"{shash}.safetensors"
    tensors = run.load_tensors(tpath)[0] if tpath.exists() else {}
    for g, s in zip(groups, steps, strict=True):
        tensors[f"epoch_{s}"] = torch.from_numpy(np.ascontiguousarray(traces[g : g + 1])).float()
    meta = {"nbetas": [float(v) for v in nbetas], "layout": "replica,nbeta,chain,draw"}
    run.save_tensors(tpath, tensors, meta)
    health, kept = health_traces.per_group(
        est.result.norms, est.result.mala_accept, traces.shape[:3]
    )
    by_step = {s: [g] for g, s in zip(groups, steps, strict=True)}
    health_traces.write_health(run, shash, health, kept, burnin, by_step)


def _merge_metrics(run: RunDir, rows: list[dict[str, Any]]) -> None:
    new = {r["epoch"] for r in rows}
    old = read_parquet(run.metrics).to_pylist() if run.metrics.exists() else []
    merged = [r for r in old if r["epoch"] not in new] + rows
    write_parquet(run.metrics, sorted(merged, key=lambda r: r["epoch"]))

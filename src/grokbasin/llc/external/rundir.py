"""External run directories from the CLI's side: rebuild the inputs, re-estimate, calibrate.

A run directory made by ``grokbasin llc external`` records its inputs as files and specs in
external.json; these functions reload them (checking that the input hash is unchanged) so
``grokbasin llc estimate RUN_DIR`` and ``grokbasin llc calibrate RUN_DIR`` work as for built-in
runs. Calibration samples an ε × γ × nβ grid at one checkpoint in one batched call
(``grokbasin.llc.calibrate``'s layout, helpers and recommendation rule; no Laplace prediction
exists for an arbitrary model, so the rule picks the largest healthy step size).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from grokbasin.config import LLCConfig, short_hash
from grokbasin.errors import ConfigError, CorruptFileError
from grokbasin.llc.calibrate import (
    Calibration,
    cell_rows,
    explain,
    grid_layout,
    heatmap,
    per_replica,
    recommend,
)
from grokbasin.llc.external import inputs as inp
from grokbasin.llc.external.core import (
    TrajectoryResult,
    _group_id,
    check_fits_external,
    estimate_into,
    module_target,
    prepare,
    sampler_config,
)
from grokbasin.llc.external.inputs import SPEC_FILE
from grokbasin.llc.trajectory import sample_with_progress
from grokbasin.store.rundir import RunDir, read_parquet, write_parquet

NO_LAPLACE = (
    "no Laplace prediction for an external model: the recommendation is the largest healthy "
    "step size (smallest γ on ties)"
)


def is_external(run_dir: str | Path) -> bool:
    """True for a run directory written by :func:`grokbasin.llc.trajectory`."""
    return (Path(run_dir) / SPEC_FILE).is_file()


def load_inputs(run_dir: str | Path, device: str = "cpu") -> inp.Inputs:
    """The run's inputs rebuilt from external.json; ConfigError if impossible or changed."""
    run = RunDir(run_dir)
    try:
        spec = json.loads((run.path / SPEC_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{run.path / SPEC_FILE}: unreadable ({e})") from None
    missing = [k for k in ("model", "loss", "data", "checkpoints") if not spec.get(k)]
    if missing or spec.get("val") == "object":
        what = ", ".join(missing) or "val_data"
        raise ConfigError(
            f"RUN_DIR: {run.path} was made from Python objects ({what}), so the command line "
            "cannot rebuild it; use grokbasin.llc.trajectory / grokbasin.llc.external.calibrate "
            "from Python"
        )
    x = prepare(
        spec["model"], spec["checkpoints"], spec["loss"], spec["data"], steps=spec["steps"],
        device=device,
    )  # fmt: skip
    if x.key != spec.get("key"):  # the content, not the folder name: a copy or rename is fine
        raise ConfigError(
            f"RUN_DIR: the inputs of {run.path} changed since it was made (input hash "
            f"{x.key}, recorded {spec.get('key')}); run grokbasin llc external again"
        )
    return x


def stored_sampler(run_dir: str | Path, given: dict[str, Any]) -> LLCConfig:
    """The newest estimate's sampler settings with ``given`` (llc.* keys or plain) on top."""
    run = RunDir(run_dir)
    base: dict[str, Any] = {}
    if run.llc.exists():
        rows = read_parquet(run.llc).select(["sampler_config"]).to_pylist()
        if rows:
            base = {
                k: v for k, v in json.loads(rows[-1]["sampler_config"]).items()
                if k in LLCConfig.model_fields
            }  # fmt: skip
    flat = {k.removeprefix("llc."): v for k, v in given.items() if v is not None}
    return sampler_config(base, None, **flat)


def estimate_run(
    run_dir: str | Path, given: dict[str, Any], device: str = "cpu", progress: bool = True
) -> TrajectoryResult:
    """`grokbasin llc estimate RUN_DIR` for an external run: stored settings + ``given``."""
    llc_cfg = stored_sampler(run_dir, given)
    x = load_inputs(run_dir, device)
    return estimate_into(RunDir(run_dir), x, llc_cfg, device, progress)


def calibrate_inputs(
    x: inp.Inputs,
    step: int | None,
    llc_cfg: LLCConfig,
    step_sizes: Sequence[float],
    gammas: Sequence[float],
    nbetas: Sequence[float] | None = None,
    progress: bool = False,
) -> Calibration:
    """Sample the ε × γ × nβ grid at one checkpoint (default: the last) in one batched call."""
    eps_list, gam_list = [float(e) for e in step_sizes], [float(g) for g in gammas]
    if not eps_list or any(not e > 0 for e in eps_list):
        raise ConfigError(f"--step-sizes: need values > 0, got {eps_list}")
    if not gam_list or any(g < 0 for g in gam_list):
        raise ConfigError(f"--gammas: need values >= 0, got {gam_list}")
    step = x.steps[-1] if step is None else int(step)
    if step not in x.steps:
        raise ConfigError(f"--epoch: no checkpoint for step {step}; have {x.steps}")
    i = x.steps.index(step)
    nb_list = (
        [float(v) for v in nbetas]
        if nbetas
        else [llc_cfg.resolve_nbeta(x.n)] + [float(v) for v in llc_cfg.nbetas]
    )
    nb_list = list(dict.fromkeys(nb_list))
    cells = grid_layout(eps_list, gam_list)
    G, B, C = len(cells), len(nb_list), llc_cfg.chains
    check_fits_external(x, llc_cfg, G * B * C, str(x.X.device))
    dev = x.X.device
    p = {k: v[None].to(dev).repeat_interleave(G * B * C, 0) for k, v in x.params[i].items()}
    target = module_target(x.model, x.loss_fn, x.X, x.Y, min(llc_cfg.batch_size, x.n), p)
    eps_r, gam_r = per_replica(cells, B, C)
    label = f"calibration: {G} cells × {B} nβ × {C} chains"
    ids = [[_group_id(x.key or "0" * 7), step]] * G
    est = sample_with_progress(target, llc_cfg, G, nb_list, ids, label, progress, eps_r, gam_r)
    rows = cell_rows(est, cells, nb_list, None, gam_list, step, 0)
    return Calibration(rows, recommend(rows), notes=[NO_LAPLACE], reasons=explain(rows))


def calibrate_run(
    run_dir: str | Path,
    step: int | None,
    given: dict[str, Any],
    step_sizes: Sequence[float],
    gammas: Sequence[float],
    nbetas: Sequence[float] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Calibration:
    """`grokbasin llc calibrate RUN_DIR` for an external run; writes RUN_DIR/calibration/."""
    llc_cfg = stored_sampler(run_dir, given)
    x = load_inputs(run_dir, device)
    cal = calibrate_inputs(x, step, llc_cfg, step_sizes, gammas, nbetas, progress)
    step = cal.rows[0]["epoch"]
    nbs = sorted({r["nbeta"] for r in cal.rows})
    tag = short_hash([llc_cfg.sampler_hash(), list(step_sizes), list(gammas), nbs], 8)
    base = RunDir(run_dir).path / "calibration" / f"calibration_e{step}_r0_{tag}"
    cal.table, cal.figure = base.with_suffix(".parquet"), base.with_suffix(".png")
    with RunDir(run_dir).lock():  # a writer of run files like any other
        write_parquet(cal.table, [{**r, "flags": ",".join(r["flags"])} for r in cal.rows])
        heatmap(cal, cal.figure)
    return cal


def calibrate(
    model: torch.nn.Module | str,
    checkpoint: Any,
    loss_fn: Callable | str,
    data: Any,
    step_sizes: Sequence[float],
    gammas: Sequence[float],
    nbetas: Sequence[float] | None = None,
    *,
    llc: LLCConfig | dict | None = None,
    device: str = "cpu",
    progress: bool = False,
    **sampler: Any,
) -> Calibration:
    """Python API: the calibration grid at one checkpoint (a state_dict or a path)."""
    x = prepare(model, [checkpoint], loss_fn, data, device=device)
    llc_cfg = sampler_config(llc, x.batch_hint, **sampler)
    return calibrate_inputs(x, None, llc_cfg, step_sizes, gammas, nbetas, progress)


def report_run(run_dir: str | Path) -> Path:
    """Re-render figures/trajectory.png and report.html from the stored files (no sampling)."""
    from grokbasin.config import safe_load
    from grokbasin.llc.external.report import write_report

    run = RunDir(run_dir)
    if not run.llc.exists():
        raise ConfigError(f"RUN_DIR: {run.path} has no LLC estimates yet")
    n = int(safe_load(run.config.read_text())["task"]["n"])
    return write_report(run, stored_sampler(run_dir, {}), n)

"""The ``grokbasin llc`` command group: estimate, calibrate, and external (your own model).

Same rules as ``cli``: flags become configs, user problems are ConfigErrors (one line, exit 2).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from grokbasin.cli_flags import (
    DEVICE_FLAG,
    JSON,
    LLC_FLAGS,
    QUIET,
    RECORD_FLAGS,
    RESTRICT_FLAG,
    Opt,
    OutOpt,
    opt,
    overrides,
    with_flags,
)
from grokbasin.config import build_config
from grokbasin.device import resolve
from grokbasin.errors import ConfigError
from grokbasin.progress import console
from grokbasin.sampler_registry import METHODS


class _LLCGroup(TyperGroup):
    """`grokbasin llc RUN_DIR ...` is shorthand for `grokbasin llc estimate RUN_DIR ...`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["estimate", *args]
        return super().parse_args(ctx, args)


llc_app = typer.Typer(
    cls=_LLCGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LLC estimates: `llc estimate RUN_DIR` (or just `llc RUN_DIR`), `llc calibrate RUN_DIR`, "
    "`llc influence RUN_DIR` (susceptibilities, Bayesian influence), "
    "`llc external` for your own model and checkpoints.",
)
RUN_DIR_ARG = Annotated[Path, typer.Argument(help="run directory (built-in or external)")]
# grokbasin.llc.external.inputs.SPEC_FILE, checked without importing torch-heavy modules
EXTERNAL_SPEC = "external.json"


def is_external(path: Path) -> bool:
    """An external run directory (cheap: importing grokbasin.llc loads ArviZ)."""
    return (Path(path) / EXTERNAL_SPEC).is_file()


@llc_app.command("estimate")
@with_flags(LLC_FLAGS, RECORD_FLAGS, RESTRICT_FLAG, DEVICE_FLAG)
def llc_estimate(run_dir: RUN_DIR_ARG, quiet: QUIET = False, **flags: Any) -> None:
    """LLC at a run's checkpoints (writes RUN_DIR/llc.parquet and the report).

    Sampler settings not given as flags are those of the run's newest estimate (else defaults).
    --restrict applies to this call only: each restriction gets its own rows next to the
    unrestricted estimate's.
    """
    from grokbasin.store.rundir import RunDir

    given = overrides(flags, LLC_FLAGS, RECORD_FLAGS, RESTRICT_FLAG)
    device = resolve(flags["device"] or "cpu")
    if is_external(run_dir):
        from grokbasin.llc.external import estimate_run as estimate_external

        _print_external(estimate_external(run_dir, given, device, progress=not quiet), False)
        return
    run = RunDir(run_dir)
    if not run.config.exists():
        from grokbasin.store.binding import remedy

        what = "a damaged run" if run.read_provenance() else "not a run directory"
        raise ConfigError(f"RUN_DIR: {run_dir} is {what} (no config.yaml); {remedy(run)}")
    from grokbasin.llc.trajectory import check_llc_fits, estimate_run
    from grokbasin.pipeline import print_summary, record_sampler, report_run, stored_config

    cfg = build_config(stored_config(run).model_dump(mode="json"), given)
    check_llc_fits(cfg, device)  # before the sampler is recorded: nothing written if refused
    record_sampler(run, cfg.llc)
    result = estimate_run(run.path, cfg.llc, device, progress=not quiet)
    console.print(
        f"LLC: {len(result.computed)} checkpoints sampled, {len(result.cached)} already estimated"
    )
    for name, done in result.restricted.items():
        console.print(f"LLC restricted to {name}: {len(done)} checkpoints sampled")
    print_summary(report_run(run, cfg))
    print(run.path)


@llc_app.command("influence")
@with_flags(LLC_FLAGS, DEVICE_FLAG)
def llc_influence(
    run_dir: RUN_DIR_ARG,
    probe: Annotated[
        str, Opt(help="subset whose samples are probed: val | all | class=K | train")
    ] = "val",
    trace_budget_mb: Annotated[
        float, Opt(help="refuse per-sample loss traces larger than this (MiB)")
    ] = 1024.0,
    quiet: QUIET = False,
    **flags: Any,
) -> None:
    """Per-sample loss traces, susceptibilities and Bayesian influence functions at a built-in
    run's checkpoints (writes RUN_DIR/llc_influence/KEY.safetensors and KEY.png; resumable).

    Sampler settings not given as flags are those of the run's newest estimate (else defaults).
    """
    from grokbasin.store.rundir import RunDir

    given, device = overrides(flags, LLC_FLAGS), resolve(flags["device"] or "cpu")
    if is_external(run_dir):
        raise ConfigError(
            "llc influence: built-in runs only; for your own model use grokbasin.llc.bif and "
            "grokbasin.llc.susceptibilities on per-sample traces (from_module(observables=...))"
        )
    run = RunDir(run_dir)
    if not run.config.exists():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a run directory (no config.yaml)")
    from grokbasin.llc.influence_run import estimate_influence
    from grokbasin.pipeline import stored_config
    from grokbasin.subset_names import check_subset

    cfg = build_config(stored_config(run).model_dump(mode="json"), given)
    check_subset(probe, cfg.task.p)
    if trace_budget_mb <= 0:
        raise ConfigError(f"--trace-budget-mb: must be > 0, got {trace_budget_mb:g}")
    res = estimate_influence(
        run.path, cfg.llc, probe, device, progress=not quiet, trace_budget_mb=trace_budget_mb
    )
    console.print(
        f"influence: {len(res.computed)} checkpoints sampled, {len(res.cached)} already done"
    )
    print(res.path)
    print(res.figure)


CALIBRATE_RESTRICT = {
    "restrict": (
        "llc.restrict",
        opt(
            list[str],
            "calibrate the chains of one weight restriction NAME=PATTERN[,PATTERN] (as in "
            "llc estimate --restrict)",
        ),
    )
}


@llc_app.command("calibrate")
@with_flags(LLC_FLAGS, CALIBRATE_RESTRICT, DEVICE_FLAG)
def llc_calibrate(
    run_dir: Annotated[
        Path | None, typer.Argument(help="run directory (built-in or external)")
    ] = None,
    epoch: Annotated[int | None, Opt(help="checkpoint epoch or step (default: last)")] = None,
    step_sizes: Annotated[str, Opt(help="step sizes to try")] = "1e-5,1e-4,1e-3,1e-2",
    gammas: Annotated[str, Opt(help="localisation strengths to try")] = "1,10,100",
    nbetas: Annotated[str | None, Opt(help="n*beta values (default: --nbeta)")] = None,
    replica: Annotated[int, Opt(help="training replica")] = 0,
    laplace: Annotated[str, Opt(help="auto | exact | slq | off")] = "auto",
    samplers: Annotated[
        str | None,
        Opt(
            help=f"samplers as a grid axis, comma-separated ({', '.join(METHODS)}); "
            "one batched call per sampler (default: --sampler)"
        ),
    ] = None,
    epochs: Annotated[
        str | None,
        Opt(
            help="several checkpoints (comma-separated), instead of --epoch: cells must keep "
            "their lambda-hat order to be recommended"
        ),
    ] = None,
    mala_target: Annotated[
        float | None,
        Opt(
            help="record MALA acceptance (SGLD) and recommend only cells reaching this value in "
            "[0, 1], e.g. 0.9; 0 records without excluding"
        ),
    ] = None,
    as_json: JSON = False,
    quiet: QUIET = False,
    **flags: Any,
) -> None:
    """An epsilon x gamma (x n*beta) grid of SGLD settings at one checkpoint, one batched call.

    Optional axes: --samplers, --epochs (ordering check), --mala-target; the advice says why the
    recommended cell won.
    """
    from grokbasin.store.rundir import RunDir

    if run_dir is None:
        raise ConfigError("llc calibrate: give the run directory: grokbasin llc calibrate RUN_DIR")
    given = overrides(flags, LLC_FLAGS, CALIBRATE_RESTRICT)
    device = resolve(flags["device"] or "cpu")
    new = {"--samplers": samplers, "--epochs": epochs, "--mala-target": mala_target}
    new["--restrict"] = flags["restrict"]
    if is_external(run_dir):
        from grokbasin.llc.external import calibrate_run

        used = [k for k, v in new.items() if v is not None]
        if used:
            raise ConfigError(f"{used[0]}: built-in runs only (not yet for external runs)")

        cal = calibrate_run(
            run_dir,
            epoch,
            given,
            _floats("step-sizes", step_sizes) or [],
            _floats("gammas", gammas) or [],
            _floats("nbetas", nbetas),
            device,
            progress=not quiet,
        )
        _print_calibration(cal, as_json)
        return
    grid = {
        "epoch": epoch,
        "step_sizes": step_sizes,
        "gammas": gammas,
        "nbetas": nbetas,
        "replica": replica,
        "laplace": laplace,
        "quiet": quiet or as_json,
        "device": device,
        "samplers": _names("samplers", samplers),
        "epochs": _ints("epochs", epochs),
        "mala_target": mala_target,
        "as_json": as_json,
    }
    _calibrate(RunDir(run_dir), given, grid)


EXTERNAL_LLC_FLAGS = {
    **{k: v for k, v in LLC_FLAGS.items() if k not in ("checkpoints", "llc_data")},
    **RECORD_FLAGS,
    **RESTRICT_FLAG,
}


@llc_app.command("external")
@with_flags(EXTERNAL_LLC_FLAGS, DEVICE_FLAG)
def llc_external(
    model: Annotated[str, Opt("--model", help="FILE.py:factory returning your nn.Module")],
    checkpoints: Annotated[
        str, Opt("--checkpoints", help='quoted glob "DIR/*.pt", a folder or one file')
    ],
    data: Annotated[Path, Opt("--data", help="DATA.pt: torch.save({'X': ..., 'Y': ...})")],
    loss: Annotated[str, Opt("--loss", help="mse | cross_entropy | FILE.py:fn")],
    out: OutOpt = Path("runs"),
    as_json: JSON = False,
    quiet: QUIET = False,
    **flags: Any,
) -> None:
    """LLC trajectory of your own model's checkpoints: all checkpoints x chains in one call.

    Checkpoints are ordered by the number in their file name. Writes OUT/<input hash>/ (llc.parquet,
    figures/trajectory.png, report.html); a rerun does no work and a killed run resumes.
    """
    from grokbasin.llc.external import trajectory

    given = overrides(flags, EXTERNAL_LLC_FLAGS)
    sampler = {k.removeprefix("llc."): v for k, v in given.items()}
    device = resolve(flags["device"] or "cpu")
    res = trajectory(
        model, checkpoints, loss, data, out=out, device=device, progress=not quiet, **sampler
    )
    _print_external(res, as_json)


def _print_external(res: Any, as_json: bool) -> None:
    summary = res.summary()
    if as_json:
        print(
            json.dumps(
                {
                    "run_dir": str(res.run_dir),
                    "computed": res.computed,
                    "cached": res.cached,
                    "llc": summary,
                },
                default=str,
            )
        )
        return
    from rich.table import Table

    t = Table(title=f"LLC trajectory {res.run_dir.name}")
    for col in ("step", "checkpoint", "LLC (mean ± std over chains)", "flags"):
        t.add_column(col)
    for r in summary:
        where = f" [{r['restriction']}]" if r.get("restriction") else ""
        t.add_row(
            str(r["step"]),
            str(r["checkpoint"]) + where,
            f"{r['llc_mean']:.4g} ± {r['llc_std']:.2g}",
            r["flags"],
        )
    console.print(t)
    from grokbasin.llc.advice import advice_lines

    for line in advice_lines(res.table.to_pylist(), shlex.quote(str(res.run_dir))):
        console.print(f"[yellow]warning:[/yellow] {line}")
    console.print(
        f"LLC: {len(res.computed)} checkpoints sampled, {len(res.cached)} already estimated"
    )
    console.print(f"report: {res.run_dir / 'report.html'}")
    print(res.run_dir)


def _floats(name: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--{name}: got {text!r}; give comma-separated numbers") from None
    if not vals or any(v <= 0 for v in vals):
        raise ConfigError(f"--{name}: every value must be > 0, got {text!r}")
    return vals


def _names(name: str, text: str | None) -> list[str] | None:
    """A comma-separated list of names (checked by the callee against its registry)."""
    if text is None:
        return None
    return [v.strip() for v in text.split(",") if v.strip()]


def _ints(name: str, text: str | None) -> list[int] | None:
    """A comma-separated list of integers, or a one-line ConfigError naming the flag."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--{name}: got {text!r}; give comma-separated integers") from None


def _calibrate(run, given: dict[str, Any], flags: dict[str, Any]) -> None:
    from grokbasin.llc.calibrate import calibrate
    from grokbasin.pipeline import stored_config

    if not run.config.exists():
        raise ConfigError(f"RUN_DIR: {run.path} is not a run directory (no config.yaml)")
    if flags["laplace"] not in ("auto", "exact", "slq", "off"):
        raise ConfigError(f"--laplace: got {flags['laplace']!r}; use auto, exact, slq or off")
    cfg = build_config(stored_config(run).model_dump(mode="json"), given)
    cal = calibrate(
        run.path,
        flags["epoch"],
        cfg.llc,
        _floats("step-sizes", flags["step_sizes"]),
        _floats("gammas", flags["gammas"]),
        _floats("nbetas", flags["nbetas"]),
        device=flags["device"],
        replica=flags["replica"],
        laplace=flags["laplace"],
        progress=not flags["quiet"],
        samplers=flags["samplers"],
        epochs=flags["epochs"],
        mala_target=flags["mala_target"],
    )
    _print_calibration(cal, flags["as_json"])


def _print_calibration(cal: Any, as_json: bool = False) -> None:
    from grokbasin.llc.calibrate import format_recommendation, to_json

    if as_json:
        print(json.dumps(to_json(cal), default=str))
        return
    for line in format_recommendation(cal):
        console.print(line)
    for path in (cal.table, cal.figure):
        if path is not None:
            print(path)

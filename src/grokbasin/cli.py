"""The command line: a thin layer that turns flags into configs and calls the Python API.

Every user-facing problem (bad config, missing file, corrupt checkpoint) is a GrokbasinError,
printed as one line on stderr with exit code 2; nothing is written before validation passes.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from grokbasin.config import RunConfig, build_config, load_yaml
from grokbasin.device import resolve
from grokbasin.errors import ConfigError, GrokbasinError
from grokbasin.presets import PRESETS, preset
from grokbasin.progress import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Grokking and phase transitions through Singular Learning Theory.",
    pretty_exceptions_enable=False,
)

Opt = typer.Option
OutOpt = Annotated[Path, Opt("--out", help="root folder of run directories")]


def _resolve_config(
    config: Path | None, preset_name: str | None, overrides: dict[str, Any]
) -> RunConfig:
    base = preset(preset_name) if preset_name else {}
    if config is not None:
        base = _deep_merge(base, load_yaml(config))
    return build_config(base, overrides)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _opt(kind: Any, help: str, *names: str) -> Any:
    return Annotated[kind | None, Opt(*names, help=help)]


# Every config flag once: CLI name -> (dotted config key, typer annotation). Commands take the
# groups they need through @with_flags, so `train`, `run` and `llc` never repeat a declaration.
TRAIN_FLAGS: dict[str, tuple[str, Any]] = {
    "p": ("task.p", _opt(int, "prime modulus p")),
    "op": ("task.op", _opt(str, "add | sub | mul | div")),
    "frac": ("task.frac", _opt(float, "training fraction in (0, 1)")),
    "width": ("model.width", _opt(int, "hidden units K")),
    "model": ("model.name", _opt(str, "quadratic | mlp | transformer")),
    "loss": ("train.loss", _opt(str, "centred_mse | cross_entropy")),
    "optimizer": ("train.optimizer", _opt(str, "adam | adamw | sgd")),
    "lr": ("train.lr", _opt(str, "learning rate(s), comma-separated: one replica each")),
    "weight_decay": ("train.weight_decay", _opt(str, "weight decay(s), comma-separated")),
    "batch_size": ("train.batch_size", _opt(int, "minibatch size (0 = full batch)")),
    "epochs": ("train.epochs", _opt(int, "training epochs")),
    "checkpoint_every": ("train.checkpoint_every", _opt(int, "epochs between checkpoints")),
    "seeds": ("train.seeds", _opt(str, "seeds, comma-separated: one replica each")),
}
LLC_FLAGS: dict[str, tuple[str, Any]] = {
    "chains": ("llc.chains", _opt(int, "SGLD chains per checkpoint")),
    "draws": ("llc.draws", _opt(int, "SGLD draws kept after burn-in")),
    "burnin": ("llc.burnin", _opt(int, "SGLD burn-in steps")),
    "thin": ("llc.thin", _opt(int, "keep every n-th draw")),
    "step_size": ("llc.step_size", _opt(float, "SGLD step size epsilon")),
    "gamma": ("llc.gamma", _opt(float, "localisation strength gamma")),
    "nbeta": ("llc.nbeta", _opt(str, "n*beta: a number, auto (B/ln B) or n_over_log_n")),
    "llc_batch_size": ("llc.batch_size", _opt(int, "SGLD minibatch size")),
    "llc_seed": ("llc.seed", _opt(int, "sampler seed")),
    "checkpoints": ("llc.checkpoints", _opt(str, "checkpoints to estimate: all, last or E1,E2")),
}
DEVICE_FLAG = {"device": ("device", _opt(str, "cpu | cuda | cuda:N | mps | auto"))}


def with_flags(*groups: dict[str, tuple[str, Any]]):
    """Add the groups' flags to a command's signature (as keyword-only options, default None)."""

    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)  # typer reads the signature as given
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
            for group in groups
            for name, (_, ann) in group.items()
        ]
        own = [q for q in sig.parameters.values() if q.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = sig.replace(parameters=[*own, *extra])
        return fn

    return deco


def overrides(flags: dict[str, Any], *groups: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Given flags -> dotted config keys (None means 'not given'); n*beta words or numbers."""
    out = {key: flags[name] for g in groups for name, (key, _) in g.items()}
    out = {k: v for k, v in out.items() if v is not None}
    nb = out.get("llc.nbeta")
    if nb is not None and nb not in ("auto", "n_over_log_n"):
        try:
            out["llc.nbeta"] = float(nb)
        except ValueError:
            raise ConfigError(
                f"llc.nbeta: got {nb!r}; use a number, auto or n_over_log_n"
            ) from None
    return out


CONFIG = Annotated[Path | None, Opt("--config", help="YAML config file (flags override it)")]
JSON = Annotated[bool, Opt("--json", help="print a machine-readable summary")]
QUIET = Annotated[bool, Opt("--quiet", help="no progress bars")]


@app.command()
@with_flags(TRAIN_FLAGS, DEVICE_FLAG)
def train(
    config: CONFIG = None,
    early_stop: Annotated[bool | None, Opt("--early-stop/--no-early-stop")] = None,
    out: OutOpt = Path("runs"),
    as_json: JSON = False,
    quiet: QUIET = False,
    **flags: Any,
) -> None:
    """Train a model (all seed x lr x weight-decay replicas batched); prints the run directory."""
    from grokbasin.train.runner import train as train_run

    given = overrides(flags, TRAIN_FLAGS, DEVICE_FLAG)
    if early_stop is not None:
        given["train.early_stop"] = early_stop
    cfg = _resolve_config(config, None, given)
    result = train_run(cfg, out, progress=not quiet)
    if as_json:
        print(
            json.dumps(
                {
                    "run_dir": str(result.run.path),
                    "status": result.status,
                    "final_epoch": result.final_epoch,
                    "hash": result.run.path.name,
                    "diverged": {str(r): e for r, e in result.diverged.items()},
                }
            )
        )
        return
    for rep, epoch in result.diverged.items():
        console.print(
            f"[yellow]warning:[/yellow] replica {rep} diverged: its loss is not finite from epoch "
            f"{epoch} (lower train.lr); the run is classified diverged"
        )
    if result.status == "cached":
        console.print(f"already trained (final epoch {result.final_epoch}); nothing to do")
    print(result.run.path)


@app.command()
@with_flags(TRAIN_FLAGS, LLC_FLAGS, DEVICE_FLAG)
def run(
    preset_name: Annotated[
        str | None, Opt("--preset", help="named preset (grokbasin presets)")
    ] = None,
    config: CONFIG = None,
    out: OutOpt = Path("runs"),
    as_json: JSON = False,
    quiet: QUIET = False,
    **flags: Any,
) -> None:
    """The main job: train, LLC at every checkpoint, theory, grokking metrics, figure, report."""
    from grokbasin.pipeline import print_summary
    from grokbasin.pipeline import run as run_pipeline

    given = overrides(flags, TRAIN_FLAGS, LLC_FLAGS, DEVICE_FLAG)
    cfg = _resolve_config(config, preset_name or "default", given)
    summary = run_pipeline(cfg, out, progress=not quiet)
    if as_json:
        print(
            json.dumps(
                {
                    "run_dir": str(summary.run.path),
                    "metrics": summary.metrics,
                    "llc": summary.llc,
                    "theory": summary.theory,
                    "health": summary.health,
                    "statuses": summary.statuses,
                    "figures": {k: str(v) for k, v in summary.figures.items()},
                },
                default=str,
            )
        )
        return
    print_summary(summary)
    print(summary.run.path)


@app.command()
def theory(
    p: Annotated[int, Opt(help="prime modulus p (outputs default to p, input dim d to 2p)")],
    width: Annotated[int, Opt(help="hidden units K")],
    d: Annotated[int | None, Opt(help="input dimension (default 2p)")] = None,
    outputs: Annotated[int | None, Opt(help="output dimension (default p)")] = None,
    as_json: JSON = False,
) -> None:
    """Closed-form LLCs of the quadratic network for one configuration (SPEC §3.4)."""
    from rich.console import Console

    from grokbasin.theory.closed_form import render_theory_table, theory_table

    _check_theory_inputs(p, width, d, outputs)
    try:
        rows = theory_table(p, width, d, outputs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    title = f"Closed-form LLCs, p={p}, K={width}, d={d or 2 * p}, outputs={outputs or p}"
    Console(width=None if sys.stdout.isatty() else 160).print(
        render_theory_table(rows, title=title)
    )


def _check_theory_inputs(p: int, width: int, d: int | None, outputs: int | None) -> None:
    """The same p and width rules as `train` (prime p >= 3, width >= 1); d, outputs >= 1."""
    from pydantic import ValidationError

    from grokbasin.config import ModelConfig, TaskConfig, format_validation_error

    try:
        TaskConfig(p=p)
        ModelConfig(width=width)
    except ValidationError as e:
        raise ConfigError("--" + format_validation_error(e)) from None
    for name, v in (("d", d), ("outputs", outputs)):
        if v is not None and v < 1:
            raise ConfigError(f"--{name}: must be >= 1, got {v}")


class _LLCGroup(TyperGroup):
    """`grokbasin llc RUN_DIR ...` is shorthand for `grokbasin llc estimate RUN_DIR ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["estimate", *args]
        return super().parse_args(ctx, args)


llc_app = typer.Typer(
    cls=_LLCGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LLC estimates: `llc estimate RUN_DIR` (or just `llc RUN_DIR`), `llc calibrate RUN_DIR`, "
    "`llc external` for your own model and checkpoints.",
)
app.add_typer(llc_app, name="llc")
RUN_DIR_ARG = Annotated[Path, typer.Argument(help="run directory (built-in or external)")]
EXTERNAL_SPEC = "external.json"  # grokbasin.llc.external.core.SPEC_FILE, checked without the import


def _is_external(path: Path) -> bool:
    """An external run directory (cheap: importing grokbasin.llc loads ArviZ)."""
    return (Path(path) / EXTERNAL_SPEC).is_file()


@llc_app.command("estimate")
@with_flags(LLC_FLAGS, DEVICE_FLAG)
def llc_estimate(run_dir: RUN_DIR_ARG, quiet: QUIET = False, **flags: Any) -> None:
    """LLC at a run's checkpoints (writes RUN_DIR/llc.parquet and the report).

    Sampler settings not given as flags are those of the run's newest estimate (else defaults).
    """
    from grokbasin.store.rundir import RunDir

    given, device = overrides(flags, LLC_FLAGS), resolve(flags["device"] or "cpu")
    if _is_external(run_dir):
        from grokbasin.llc.external import estimate_run as estimate_external

        _print_external(estimate_external(run_dir, given, device, progress=not quiet), False)
        return
    run = RunDir(run_dir)
    if not run.config.exists():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a run directory (no config.yaml)")
    from grokbasin.llc.trajectory import estimate_run
    from grokbasin.pipeline import print_summary, record_sampler, report_run, stored_config

    cfg = build_config(stored_config(run).model_dump(mode="json"), given)
    record_sampler(run, cfg.llc)
    result = estimate_run(run.path, cfg.llc, device, progress=not quiet)
    console.print(
        f"LLC: {len(result.computed)} checkpoints sampled, {len(result.cached)} already estimated"
    )
    print_summary(report_run(run, cfg))
    print(run.path)


@llc_app.command("calibrate")
@with_flags(LLC_FLAGS, DEVICE_FLAG)
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
    quiet: QUIET = False,
    **flags: Any,
) -> None:
    """An epsilon x gamma (x n*beta) grid of SGLD settings at one checkpoint, one batched call."""
    from grokbasin.store.rundir import RunDir

    if run_dir is None:
        raise ConfigError("llc calibrate: give the run directory: grokbasin llc calibrate RUN_DIR")
    given, device = overrides(flags, LLC_FLAGS), resolve(flags["device"] or "cpu")
    if _is_external(run_dir):
        from grokbasin.llc.external import calibrate_run

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
        _print_calibration(cal)
        return
    grid = {
        "epoch": epoch,
        "step_sizes": step_sizes,
        "gammas": gammas,
        "nbetas": nbetas,
        "replica": replica,
        "laplace": laplace,
        "quiet": quiet,
        "device": device,
    }
    _calibrate(RunDir(run_dir), given, grid)


EXTERNAL_LLC_FLAGS = {k: v for k, v in LLC_FLAGS.items() if k != "checkpoints"}


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
        t.add_row(
            str(r["step"]),
            str(r["checkpoint"]),
            f"{r['llc_mean']:.4g} ± {r['llc_std']:.2g}",
            r["flags"],
        )
    console.print(t)
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
    )
    _print_calibration(cal)


def _print_calibration(cal: Any) -> None:
    from grokbasin.llc.calibrate import format_recommendation

    for line in format_recommendation(cal):
        console.print(line)
    for path in (cal.table, cal.figure):
        if path is not None:
            print(path)


@app.command()
def runs(
    out: OutOpt = Path("runs"),
    sql: Annotated[str | None, Opt(help="SQL over the views runs, metrics, llc")] = None,
    as_json: JSON = False,
) -> None:
    """List every run under --out, or answer SQL over all results (DuckDB)."""
    import warnings

    from grokbasin.store import db

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", db.StoreWarning)
        cols, rows = db.query(out, sql) if sql else db.list_runs(out)
    for w in caught:
        console.print(f"[yellow]warning:[/yellow] {w.message}")
    if as_json:
        print(json.dumps([dict(zip(cols, r, strict=True)) for r in rows], default=str))
        return
    from rich.table import Table

    t = Table()
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*(_cell(v) for v in r))
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 200).print(t)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


BACKEND = Annotated[str, Opt(help="local | ray")]
WORKERS = Annotated[int, Opt(help="parallel local worker processes (local backend)")]
ADDRESS = Annotated[str | None, Opt(help="Ray cluster address (default: start a local Ray)")]


@app.command()
def sweep(
    file: Annotated[Path, typer.Argument(help="sweep YAML: base, grid, points, seeds, llc")],
    out: OutOpt = Path("runs"),
    backend: BACKEND = "local",
    workers: WORKERS = 1,
    address: ADDRESS = None,
    quiet: QUIET = False,
) -> None:
    """Run a sweep; finished runs and estimates are reused, killed ones resume."""
    from grokbasin.experiments.sweep import expand, group, load_sweep, run_sweep
    from grokbasin.store.rundir import check_out_root
    from grokbasin.train.runner import preflight

    _check_backend(backend, workers)
    check_out_root(out)
    sw = load_sweep(file)
    for cfgs in group(expand(sw)):  # every group's memory, before any group trains
        preflight(cfgs, out)
    res = run_sweep(sw, out, backend, workers, address, progress=not quiet)
    console.print(f"{len(res.runs)} runs: {res.trained} trained, {res.sampled} LLC estimates made")
    for r in res.runs:
        print(r.path)


def _check_backend(backend: str, workers: int) -> None:
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend: got {backend!r}; use local or ray")
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")


@app.command()
def experiment(
    name: Annotated[str | None, typer.Argument(help="experiment name (see --list)")] = None,
    list_: Annotated[bool, Opt("--list", help="list the named experiments")] = False,
    scale: Annotated[str, Opt(help="small (this CPU, minutes) | paper (GPU/cluster)")] = "small",
    backend: BACKEND = "local",
    workers: WORKERS = 1,
    device: Annotated[
        str | None, Opt(help="cpu | cuda | auto (default: the grid's; paper grids say auto)")
    ] = None,
    out: OutOpt = Path("runs"),
    quiet: QUIET = False,
) -> None:
    """Reproduce a paper figure as a resumable sweep; writes figures, tables and a report."""
    from grokbasin.experiments.registry import list_experiments, run_experiment

    if list_ or name is None:
        for e in list_experiments():
            print(f"{e.name:<24} {e.description}")
        return
    _check_backend(backend, workers)
    from grokbasin.store.rundir import check_out_root

    check_out_root(out)
    if device is not None:
        resolve(device)
    res = run_experiment(name, scale, out, backend, workers, device, progress=not quiet)
    for note in res.notes:
        console.print(f"note: {note}")
    for kind, paths in (("figure", res.figures), ("table", res.tables)):
        for caption, path in paths.items():
            console.print(f"{kind} {caption}: {path}")
    if res.report:
        print(res.report)


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="a run directory or an experiment folder")],
) -> None:
    """(Re)render the HTML and Markdown report of a run from its stored files."""
    from grokbasin.pipeline import print_summary, report_run
    from grokbasin.store.rundir import RunDir

    if _is_external(path):
        from grokbasin.llc.external.rundir import report_run as report_external

        print(report_external(path))
        return
    run = RunDir(path)
    if run.config.exists():
        print_summary(report_run(run))
        print(run.report)
        return
    html = path / "report.html"
    if html.exists():
        print(html)
        return
    raise ConfigError(f"PATH: {path} is neither a run directory nor an experiment folder")


@app.command("presets")
def list_presets() -> None:
    """List the named presets usable with `grokbasin run --preset NAME`."""
    for name, (desc, _) in PRESETS.items():
        print(f"{name:<14} {desc}")


def main() -> None:
    """Console entry point: one clean line for user errors, never a traceback."""
    try:
        app()  # standalone: typer/click print usage errors themselves and exit 2
    except GrokbasinError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # the file system refused: permissions, a full disk, a file in the way
        where = e.filename or "file system"
        console.print(
            f"[red]error:[/red] {where}: {e.strerror or e}; nothing further was written",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except MemoryError:
        console.print("[red]error:[/red] out of memory; use a smaller configuration")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted: re-run the same command to resume where it stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()

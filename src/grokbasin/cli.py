"""The command line: a thin layer that turns flags into configs and calls the Python API.

Every user-facing problem (bad config, missing file, corrupt checkpoint) is a GrokbasinError,
printed as one line on stderr with exit code 2; nothing is written before validation passes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from grokbasin import interrupt
from grokbasin.cli_flags import (
    CONFIG,
    DEVICE_FLAG,
    JSON,
    LLC_FLAGS,
    QUIET,
    RECORD_FLAGS,
    RESTRICT_FLAG,
    TRAIN_FLAGS,
    Opt,
    OutOpt,
    overrides,
    with_flags,
)
from grokbasin.cli_llc import is_external, llc_app
from grokbasin.config import RunConfig, build_config, load_yaml
from grokbasin.device import resolve
from grokbasin.errors import ConfigError, GrokbasinError
from grokbasin.presets import PRESETS, preset
from grokbasin.progress import console
from grokbasin.store.rundir import UNVERIFIED_ENV

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Grokking and phase transitions through Singular Learning Theory.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    unverified_ok: Annotated[
        bool,
        Opt(
            "--unverified-ok",
            help="read run files that carry no checksum as they are (they are refused otherwise)",
        ),
    ] = False,
) -> None:
    """Options for every command."""
    if unverified_ok:
        os.environ[UNVERIFIED_ENV] = "1"


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
@with_flags(TRAIN_FLAGS, LLC_FLAGS, RECORD_FLAGS, RESTRICT_FLAG, DEVICE_FLAG)
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

    given = overrides(flags, TRAIN_FLAGS, LLC_FLAGS, RECORD_FLAGS, RESTRICT_FLAG, DEVICE_FLAG)
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


app.add_typer(llc_app, name="llc")


@app.command()
def runs(
    out: OutOpt = Path("runs"),
    sql: Annotated[str | None, Opt(help="SQL over the views runs, metrics, llc")] = None,
    as_json: JSON = False,
    repair: Annotated[
        Path | None, Opt("--repair", help="train a damaged or unfinished RUN again")
    ] = None,
    remove: Annotated[Path | None, Opt("--remove", help="delete the run directory RUN")] = None,
    limit: Annotated[int, Opt(help="rows shown in the table (0: all)")] = 100,
    as_csv: Annotated[bool, Opt("--csv", help="stream every row as CSV")] = False,
    output: Annotated[
        Path | None, Opt("--output", help="write every row to FILE (.csv, .json or .parquet)")
    ] = None,
    quiet: QUIET = False,
) -> None:
    """List every run under --out (with its problems), or answer SQL over all results (DuckDB).

    The table shows --limit rows and says how many it left out; --json and --csv stream every
    row, and --output FILE writes them to a file. ``--repair RUN`` trains a damaged or
    unfinished run again; ``--remove RUN`` deletes it.
    """
    import warnings

    from grokbasin.store import binding, db
    from grokbasin.store.output import format_for as output_format
    from grokbasin.store.output import head
    from grokbasin.store.output import write as write_rows
    from grokbasin.store.rundir import RunDir

    if repair is not None or remove is not None:
        if repair is not None:
            from grokbasin.train.runner import repair as retrain

            retrain(RunDir(repair), not quiet)
        else:
            binding.remove(RunDir(remove))  # type: ignore[arg-type]
        console.print(f"done: {repair or remove}")
        return

    if limit < 0:
        raise ConfigError(f"--limit: must be >= 0, got {limit}")
    fmt = output_format(output, as_json, as_csv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", db.StoreWarning)
        if sql is None and (fmt == "table" or not db.scan(out).runs):
            cols, rows = db.list_runs(out)
            _warn(caught)
            if fmt != "table":  # no runs: nothing to stream
                print("[]" if fmt == "json" else ",".join(cols))
                return
            rows, left = (rows[:limit], max(0, len(rows) - limit)) if limit else (rows, 0)
        else:
            with db.stream(out, sql if sql is not None else db.LIST_SQL) as (cols, reader):
                _warn(caught)
                if fmt != "table":
                    write_rows(fmt, cols, reader, output)
                    return
                rows, left = head(reader, limit)
    _print_table(cols, rows)
    if left:
        console.print(
            f"… {left:,} more rows not shown (--limit {limit}); use --limit 0, --csv, --json "
            "or --output FILE for all of them"
        )


def _warn(caught: list) -> None:
    """Print the store's warnings once (the list is emptied)."""
    for w in caught:
        console.print(f"[yellow]warning:[/yellow] {w.message}")
    caught.clear()


def _print_table(cols: list[str], rows: list[tuple]) -> None:
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
    from grokbasin.experiments.sweep import load_sweep, run_sweep
    from grokbasin.store.rundir import check_out_root

    _check_backend(backend, workers)
    check_out_root(out)
    sw = load_sweep(file)
    # every group's memory is checked (run_configs) before any group trains
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

    if is_external(path):
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
        with interrupt.handling():
            app()  # standalone: typer/click print usage errors themselves and exit 2
    except SystemExit:
        if not interrupt.signalled():  # typer turns KeyboardInterrupt into exit 130 itself
            raise
        _interrupted()
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
        _interrupted()


def _interrupted() -> None:
    console.print("interrupted: re-run the same command to resume where it stopped")
    sys.exit(interrupt.exit_code())


if __name__ == "__main__":
    main()

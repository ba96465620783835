"""The command line: a thin layer that turns flags into configs and calls the Python API.

Every user-facing problem (bad config, missing file, corrupt checkpoint) is a GrokbasinError,
printed as one line on stderr with exit code 2; nothing is written before validation passes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from grokbasin.config import RunConfig, build_config, load_yaml
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


def _train_overrides(**flags: Any) -> dict[str, Any]:
    """CLI flags → dotted config keys (None means 'not given')."""
    keys = {
        "p": "task.p", "op": "task.op", "frac": "task.frac", "data_seed": "task.data_seed",
        "model": "model.name", "width": "model.width", "embed_dim": "model.embed_dim",
        "activation": "model.activation",
        "loss": "train.loss", "optimizer": "train.optimizer", "lr": "train.lr",
        "weight_decay": "train.weight_decay", "momentum": "train.momentum",
        "batch_size": "train.batch_size", "epochs": "train.epochs",
        "checkpoint_every": "train.checkpoint_every", "seeds": "train.seeds",
        "early_stop": "train.early_stop", "device": "device",
    }  # fmt: skip
    return {keys[k]: v for k, v in flags.items() if k in keys and v is not None}


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


# Shared training flags (typer needs them spelled out per command).
P = Annotated[int | None, Opt(help="prime modulus p")]
OP = Annotated[str | None, Opt(help="add | sub | mul | div")]
FRAC = Annotated[float | None, Opt(help="training fraction in (0, 1)")]
WIDTH = Annotated[int | None, Opt(help="hidden units K")]
MODEL = Annotated[str | None, Opt(help="quadratic | mlp")]
LOSS = Annotated[str | None, Opt(help="centred_mse | cross_entropy")]
OPTIM = Annotated[str | None, Opt(help="adam | adamw | sgd")]
LR = Annotated[str | None, Opt(help="learning rate(s), comma-separated: one replica each")]
WD = Annotated[str | None, Opt("--weight-decay", help="weight decay(s), comma-separated")]
BATCH = Annotated[int | None, Opt(help="minibatch size (0 = full batch)")]
EPOCHS = Annotated[int | None, Opt(help="training epochs")]
CKPT = Annotated[int | None, Opt(help="epochs between checkpoints")]
SEEDS = Annotated[str | None, Opt(help="seeds, comma-separated: one replica each")]
DEVICE = Annotated[str | None, Opt(help="cpu | cuda | cuda:N | mps | auto")]
CONFIG = Annotated[Path | None, Opt("--config", help="YAML config file (flags override it)")]
JSON = Annotated[bool, Opt("--json", help="print a machine-readable summary")]
QUIET = Annotated[bool, Opt("--quiet", help="no progress bars")]


@app.command()
def train(
    config: CONFIG = None,
    p: P = None,
    op: OP = None,
    frac: FRAC = None,
    width: WIDTH = None,
    model: MODEL = None,
    loss: LOSS = None,
    optimizer: OPTIM = None,
    lr: LR = None,
    weight_decay: WD = None,
    batch_size: BATCH = None,
    epochs: EPOCHS = None,
    checkpoint_every: CKPT = None,
    seeds: SEEDS = None,
    early_stop: Annotated[bool | None, Opt("--early-stop/--no-early-stop")] = None,
    device: DEVICE = None,
    out: OutOpt = Path("runs"),
    as_json: JSON = False,
    quiet: QUIET = False,
) -> None:
    """Train a model (all seed x lr x weight-decay replicas batched); prints the run directory."""
    from grokbasin.train.runner import train as train_run

    overrides = _train_overrides(**locals())
    cfg = _resolve_config(config, None, overrides)
    result = train_run(cfg, out, progress=not quiet)
    if as_json:
        print(
            json.dumps(
                {
                    "run_dir": str(result.run.path),
                    "status": result.status,
                    "final_epoch": result.final_epoch,
                    "hash": result.run.path.name,
                }
            )
        )
        return
    if result.status == "cached":
        console.print(f"already trained (final epoch {result.final_epoch}); nothing to do")
    print(result.run.path)


CHAINS = Annotated[int | None, Opt(help="SGLD chains per checkpoint")]
DRAWS = Annotated[int | None, Opt(help="SGLD draws kept after burn-in")]
BURNIN = Annotated[int | None, Opt(help="SGLD burn-in steps")]
THIN = Annotated[int | None, Opt(help="keep every n-th draw")]
STEP = Annotated[float | None, Opt(help="SGLD step size epsilon")]
GAMMA = Annotated[float | None, Opt(help="localisation strength gamma")]
NBETA = Annotated[str | None, Opt(help="n*beta: a number, auto (B/ln B) or n_over_log_n")]
LLC_BATCH = Annotated[int | None, Opt("--llc-batch-size", help="SGLD minibatch size")]
LLC_SEED = Annotated[int | None, Opt("--llc-seed", help="sampler seed")]
CKPTS = Annotated[str | None, Opt(help="checkpoints to estimate: all, last or E1,E2,...")]


def _llc_overrides(**flags: Any) -> dict[str, Any]:
    keys = {
        "chains": "chains",
        "draws": "draws",
        "burnin": "burnin",
        "thin": "thin",
        "step_size": "step_size",
        "gamma": "gamma",
        "nbeta": "nbeta",
        "llc_batch_size": "batch_size",
        "llc_seed": "seed",
        "checkpoints": "checkpoints",
    }
    out = {f"llc.{keys[k]}": v for k, v in flags.items() if k in keys and v is not None}
    nb = out.get("llc.nbeta")
    if nb is not None and nb not in ("auto", "n_over_log_n"):
        try:
            out["llc.nbeta"] = float(nb)
        except ValueError:
            raise ConfigError(
                f"llc.nbeta: got {nb!r}; use a number, auto or n_over_log_n"
            ) from None
    return out


@app.command()
def run(
    preset_name: Annotated[
        str | None, Opt("--preset", help="named preset (grokbasin presets)")
    ] = None,
    config: CONFIG = None,
    p: P = None,
    op: OP = None,
    frac: FRAC = None,
    width: WIDTH = None,
    model: MODEL = None,
    loss: LOSS = None,
    optimizer: OPTIM = None,
    lr: LR = None,
    weight_decay: WD = None,
    batch_size: BATCH = None,
    epochs: EPOCHS = None,
    checkpoint_every: CKPT = None,
    seeds: SEEDS = None,
    chains: CHAINS = None,
    draws: DRAWS = None,
    burnin: BURNIN = None,
    step_size: STEP = None,
    gamma: GAMMA = None,
    nbeta: NBETA = None,
    device: DEVICE = None,
    out: OutOpt = Path("runs"),
    as_json: JSON = False,
    quiet: QUIET = False,
) -> None:
    """The main job: train, LLC at every checkpoint, theory, grokking metrics, figure, report."""
    from grokbasin.pipeline import print_summary
    from grokbasin.pipeline import run as run_pipeline

    flags = dict(locals())
    overrides = _train_overrides(**flags) | _llc_overrides(**flags)
    cfg = _resolve_config(config, preset_name or "default", overrides)
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


@app.command()
def llc(
    target: Annotated[str, typer.Argument(help="RUN_DIR, or 'calibrate' followed by RUN_DIR")],
    run_dir: Annotated[
        Path | None, typer.Argument(help="run directory (after 'calibrate')")
    ] = None,
    checkpoints: CKPTS = None,
    chains: CHAINS = None,
    draws: DRAWS = None,
    burnin: BURNIN = None,
    thin: THIN = None,
    step_size: STEP = None,
    gamma: GAMMA = None,
    nbeta: NBETA = None,
    llc_batch_size: LLC_BATCH = None,
    llc_seed: LLC_SEED = None,
    epoch: Annotated[int | None, Opt(help="calibrate: checkpoint epoch (default: last)")] = None,
    step_sizes: Annotated[str, Opt(help="calibrate: step sizes to try")] = "1e-5,1e-4,1e-3,1e-2",
    gammas: Annotated[str, Opt(help="calibrate: localisation strengths to try")] = "1,10,100",
    nbetas: Annotated[str | None, Opt(help="calibrate: n*beta values (default: --nbeta)")] = None,
    replica: Annotated[int, Opt(help="calibrate: training replica")] = 0,
    laplace: Annotated[str, Opt(help="calibrate: auto | exact | slq | off")] = "auto",
    device: DEVICE = None,
    quiet: QUIET = False,
) -> None:
    """LLC at a run's checkpoints (writes RUN_DIR/llc.parquet), or `llc calibrate RUN_DIR`."""
    from grokbasin.store.rundir import RunDir

    flags = dict(locals())
    if target == "calibrate":
        if run_dir is None:
            raise ConfigError(
                "llc calibrate: give the run directory: grokbasin llc calibrate RUN_DIR"
            )
        _calibrate(RunDir(run_dir), flags)
        return
    if run_dir is not None:
        raise ConfigError(f"llc: unexpected second argument {str(run_dir)!r}")
    run = RunDir(target)
    if not run.config.exists():
        raise ConfigError(f"RUN_DIR: {target} is not a run directory (no config.yaml)")
    from grokbasin.llc.trajectory import estimate_run
    from grokbasin.pipeline import print_summary, report_run

    cfg = build_config(load_yaml(run.config), _llc_overrides(**flags))
    dev = device or "cpu"
    result = estimate_run(run.path, cfg.llc, dev, progress=not quiet)
    console.print(
        f"LLC: {len(result.computed)} checkpoints sampled, {len(result.cached)} already estimated"
    )
    print_summary(report_run(run, cfg))
    print(run.path)


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


def _calibrate(run, flags: dict[str, Any]) -> None:
    from grokbasin.llc.calibrate import calibrate, format_recommendation

    if not run.config.exists():
        raise ConfigError(f"RUN_DIR: {run.path} is not a run directory (no config.yaml)")
    if flags["laplace"] not in ("auto", "exact", "slq", "off"):
        raise ConfigError(f"--laplace: got {flags['laplace']!r}; use auto, exact, slq or off")
    cfg = build_config(load_yaml(run.config), _llc_overrides(**flags))
    cal = calibrate(
        run.path,
        flags["epoch"],
        cfg.llc,
        _floats("step-sizes", flags["step_sizes"]),
        _floats("gammas", flags["gammas"]),
        _floats("nbetas", flags["nbetas"]),
        device=flags["device"] or "cpu",
        replica=flags["replica"],
        laplace=flags["laplace"],
        progress=not flags["quiet"],
    )
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
    from grokbasin.experiments.sweep import run_sweep

    _check_backend(backend, workers)
    res = run_sweep(file, out, backend, workers, address, progress=not quiet)
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
    device: Annotated[str, Opt(help="cpu | cuda | auto")] = "cpu",
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
    except KeyboardInterrupt:
        console.print("interrupted: re-run the same command to resume where it stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()

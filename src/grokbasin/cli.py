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

"""Command-line flags declared once: config flag groups, shared options, flags -> config keys.

``cli`` and ``cli_llc`` take the groups they need through :func:`with_flags`, so no command
repeats a declaration.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from grokbasin.errors import ConfigError
from grokbasin.restrictions import parse_flags
from grokbasin.sampler_registry import METHODS, options_help

Opt = typer.Option
OutOpt = Annotated[Path, Opt("--out", help="root folder of run directories")]


def opt(kind: Any, help: str, *names: str) -> Any:
    """An optional flag of type ``kind`` (None when not given)."""
    return Annotated[kind | None, Opt(*names, help=help)]


# Every config flag once: CLI name -> (dotted config key, typer annotation). Commands take the
# groups they need through @with_flags, so `train`, `run` and `llc` never repeat a declaration.
TRAIN_FLAGS: dict[str, tuple[str, Any]] = {
    "p": ("task.p", opt(int, "prime modulus p")),
    "op": ("task.op", opt(str, "add | sub | mul | div")),
    "frac": ("task.frac", opt(float, "training fraction in (0, 1)")),
    "width": ("model.width", opt(int, "hidden units K")),
    "model": ("model.name", opt(str, "quadratic | mlp | transformer")),
    "loss": ("train.loss", opt(str, "centred_mse | cross_entropy")),
    "optimizer": ("train.optimizer", opt(str, "adam | adamw | sgd")),
    "lr": ("train.lr", opt(str, "learning rate(s), comma-separated: one replica each")),
    "weight_decay": ("train.weight_decay", opt(str, "weight decay(s), comma-separated")),
    "batch_size": ("train.batch_size", opt(int, "minibatch size (0 = full batch)")),
    "unit": ("train.unit", opt(str, "what --epochs counts: pass (full pass) | step (one batch)")),
    "epochs": ("train.epochs", opt(int, "training length in units (--unit)")),
    "checkpoint_every": ("train.checkpoint_every", opt(int, "units between checkpoints")),
    "seeds": ("train.seeds", opt(str, "seeds, comma-separated: one replica each")),
}
LLC_FLAGS: dict[str, tuple[str, Any]] = {
    "chains": ("llc.chains", opt(int, "SGLD chains per checkpoint")),
    "draws": ("llc.draws", opt(int, "SGLD draws kept after burn-in")),
    "burnin": ("llc.burnin", opt(int, "SGLD burn-in steps")),
    "thin": ("llc.thin", opt(int, "keep every n-th draw")),
    "step_size": ("llc.step_size", opt(float, "SGLD step size epsilon")),
    "gamma": ("llc.gamma", opt(float, "localisation strength gamma")),
    "nbeta": ("llc.nbeta", opt(str, "n*beta: a number, auto (B/ln B) or n_over_log_n")),
    "llc_batch_size": ("llc.batch_size", opt(int, "SGLD minibatch size")),
    "llc_seed": ("llc.seed", opt(int, "sampler seed")),
    "checkpoints": ("llc.checkpoints", opt(str, "checkpoints to estimate: all, last or E1,E2")),
    "llc_data": (
        "llc.data",
        opt(str, "data-refined LLC: the posterior's loss on train | val | all | class=K"),
    ),
    "sampler": ("llc.method", opt(str, " | ".join(METHODS))),
    "sampler_option": (
        "llc.options",
        opt(
            list[str],
            f"the sampler's own setting NAME=VALUE, repeatable ({options_help()}); "
            "--sampler alone resets them",
        ),
    ),
}
RECORD_FLAGS: dict[str, tuple[str, Any]] = {
    "record_norms": (
        "llc.record_norms",
        opt(bool, "store gradient, noise and distance norm traces for the report's dashboard"),
    ),
    "mala": ("llc.mala", opt(bool, "record MALA acceptance for the dashboard (sgld only)")),
}
"""What an estimate records for the report's sampler dashboard (estimate, run, external)."""
DEVICE_FLAG = {"device": ("device", opt(str, "cpu | cuda | cuda:N | mps | auto"))}
RESTRICT_FLAG = {
    "restrict": (
        "llc.restrict",
        opt(
            list[str],
            "weight-restricted LLC NAME=PATTERN[,PATTERN] (parameter-name globs; PATTERN#head=H "
            "for one attention head), repeatable: all run in one call with the unrestricted λ̂",
        ),
    )
}


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
    if "llc.restrict" in out:
        out["llc.restrict"] = parse_flags(out["llc.restrict"])
    if "llc.options" in out:
        out["llc.options"] = _options(out["llc.options"])
    elif "llc.method" in out:  # another sampler: the stored run's options are not its options
        out["llc.options"] = {}
    nb = out.get("llc.nbeta")
    if nb is not None and nb not in ("auto", "n_over_log_n"):
        try:
            out["llc.nbeta"] = float(nb)
        except ValueError:
            raise ConfigError(
                f"llc.nbeta: got {nb!r}; use a number, auto or n_over_log_n"
            ) from None
    return out


def _options(items: list[str]) -> dict[str, float]:
    """``NAME=VALUE`` flags as a dict of numbers (the config checks the names and ranges)."""
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        try:
            if not (eq and name.strip()):
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"llc.options: got {item!r}; use --sampler-option NAME=VALUE with a number"
            ) from None
    return out


CONFIG = Annotated[Path | None, Opt("--config", help="YAML config file (flags override it)")]
JSON = Annotated[bool, Opt("--json", help="print a machine-readable summary")]
QUIET = Annotated[bool, Opt("--quiet", help="no progress bars")]

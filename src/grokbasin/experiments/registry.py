"""Named experiments: a lookup over :mod:`.catalogue` for the CLI, and running one by name.

``run_experiment`` picks the scale's grid, computes, plots and writes figures, CSVs and a report
under ``root/experiments/<name>-<scale>/``. Runs live under ``root`` keyed by config hash, so every
experiment and sweep shares them. A grid's ``trim`` (why it deviates from the paper) is stated in
the report next to the method. Experiment modules never import this module: adding one is a
module plus one entry in the catalogue.
"""

from __future__ import annotations

from pathlib import Path

from grokbasin.errors import ConfigError
from grokbasin.experiments.experiment import (
    SCALES,
    Context,
    Experiment,
    Grid,
    Output,
    trim_notes,
)
from grokbasin.experiments.output import ExperimentResult, out_dir


def _registry() -> dict[str, Experiment]:
    from grokbasin.experiments.catalogue import EXPERIMENTS

    return {e.name: e for e in EXPERIMENTS}


def list_experiments() -> list[Experiment]:
    """Every experiment of the catalogue, in its order."""
    return list(_registry().values())


def get(name: str) -> Experiment:
    """The experiment called ``name`` (ConfigError naming the choices otherwise)."""
    reg = _registry()
    if name not in reg:
        raise ConfigError(f"experiment: got {name!r}; choose one of {', '.join(reg)}")
    return reg[name]


def run_experiment(
    name: str,
    scale: str = "small",
    root: str | Path = "runs",
    backend: str = "local",
    workers: int = 1,
    device: str | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Run a named experiment at a scale; finished runs and estimates are reused."""
    if scale not in SCALES:
        raise ConfigError(f"--scale: got {scale!r}; use small or paper")
    ctx = Context(Path(root), scale, backend, workers, device, progress)
    return get(name).run(ctx)


__all__ = [
    "SCALES",
    "Context",
    "Experiment",
    "ExperimentResult",
    "Grid",
    "Output",
    "trim_notes",
    "get",
    "list_experiments",
    "out_dir",
    "run_experiment",
]

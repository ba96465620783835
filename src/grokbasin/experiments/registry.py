"""Named experiments: ``@register(name, description)`` and a lookup for the CLI.

An experiment is a function (scale, root, backend, workers, device, progress) -> ExperimentResult
that runs its sweep(s) under ``root`` (runs shared with every other sweep by config hash) and
writes figures, plotted numbers and a report section under ``root/experiments/<name>-<scale>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from grokbasin.errors import ConfigError

Scale = Literal["small", "paper"]
SCALES: tuple[str, ...] = ("small", "paper")


@dataclass
class ExperimentResult:
    """What an experiment produced: figure and table paths, summary rows and plain notes."""

    name: str
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: Path | None = None


class ExperimentFn(Protocol):
    def __call__(
        self, scale: str, root: Path, backend: str, workers: int, device: str, progress: bool
    ) -> ExperimentResult: ...


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    fn: ExperimentFn


_REGISTRY: dict[str, Experiment] = {}


def register(name: str, description: str) -> Callable[[ExperimentFn], ExperimentFn]:
    """Decorator adding an experiment function under ``name``."""

    def deco(fn: ExperimentFn) -> ExperimentFn:
        _REGISTRY[name] = Experiment(name, description, fn)
        return fn

    return deco


def _load() -> None:
    import grokbasin.experiments.paper_a  # noqa: F401  (registers on import)
    import grokbasin.experiments.paper_b  # noqa: F401
    import grokbasin.experiments.transformer  # noqa: F401


def list_experiments() -> list[Experiment]:
    """Every registered experiment, in registration order."""
    _load()
    return list(_REGISTRY.values())


def get(name: str) -> Experiment:
    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"experiment: got {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def out_dir(root: str | Path, name: str, scale: str) -> Path:
    """Where an experiment writes its figures, tables and report."""
    return Path(root) / "experiments" / f"{name}-{scale}"


def run_experiment(
    name: str,
    scale: str = "small",
    root: str | Path = "runs",
    backend: str = "local",
    workers: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> ExperimentResult:
    """Run a named experiment at a scale; finished runs and estimates are reused."""
    if scale not in SCALES:
        raise ConfigError(f"--scale: got {scale!r}; use small or paper")
    exp = get(name)
    return exp.fn(
        scale=scale,
        root=Path(root),
        backend=backend,
        workers=workers,
        device=device,
        progress=progress,
    )


__all__ = [
    "ExperimentResult",
    "SCALES",
    "get",
    "list_experiments",
    "out_dir",
    "register",
    "run_experiment",
]

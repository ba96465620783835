"""Named experiments: what each one is (grids, compute, plot) and a lookup for the CLI.

An experiment is data plus two functions (see the ``experiments`` package docstring):

    grids    {scale: grid}, each grid a plain dict (a sweep spec plus the experiment's own keys)
    compute  (grid, ctx) -> Output: trains/samples what is missing through the sweep engine and
             returns the plotted rows, the summary rows and neutral facts for titles
    plot     Output -> {figure key: Figure}

``run_experiment`` picks the scale's grid, computes, plots and writes figures, CSVs and a report
under ``root/experiments/<name>-<scale>/``. Runs live under ``root`` keyed by config hash, so every
experiment and sweep shares them. A grid's ``trim`` (why it deviates from the paper) is stated in
the report next to the method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from grokbasin.errors import ConfigError

Scale = Literal["small", "paper"]
SCALES: tuple[str, ...] = ("small", "paper")
Grid = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """Arguments every experiment shares: where runs live and how to compute them.

    device None: the grid's own device ("auto" at paper scale: CUDA if present, else CPU).
    """

    root: Path = Path("runs")
    scale: str = "small"
    backend: str = "local"
    workers: int = 1
    device: str | None = None
    progress: bool = False

    def with_(self, **kw: Any) -> Context:
        return replace(self, **kw)


@dataclass
class Output:
    """What ``compute`` returns: plotted rows (one CSV per key), summary rows, neutral facts."""

    tables: dict[str, list[dict[str, Any]]]
    summary: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    """What an experiment produced: figure and table paths, summary rows and plain notes."""

    name: str
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: Path | None = None
    output: Output | None = None


@dataclass(frozen=True)
class Experiment:
    """A named experiment: grids per scale (data), compute, plot, and fixed method text."""

    name: str
    description: str
    grids: Mapping[str, Grid]
    compute: Callable[[Grid, Context], Output]
    plot: Callable[[Output], dict[str, Any]]
    method: str = ""

    def run(self, ctx: Context, grid: Grid | None = None) -> ExperimentResult:
        """Compute (resumable), plot and write outputs for ``ctx.scale`` (or the given grid)."""
        from grokbasin.experiments.common import finish

        g = grid if grid is not None else self.grids[ctx.scale]
        out = self.compute(g, ctx)
        figs = self.plot(out)
        notes = trim_notes(g)
        res = finish(
            self.name, ctx.scale, ctx.root, figs, out.tables, out.summary, notes, self.method
        )
        res.notes = [self.method, *notes] if self.method else notes
        res.output = out
        return res


def trim_notes(grid: Grid) -> list[str]:
    """The grid's stated deviation from the paper (key ``trim``) as a report line, if any."""
    return [f"Deviation from the paper's grid: {grid['trim']}."] if grid.get("trim") else []


_REGISTRY: dict[str, Experiment] = {}


def add(exp: Experiment) -> Experiment:
    """Register an experiment under its name (modules call this at import)."""
    _REGISTRY[exp.name] = exp
    return exp


def _load() -> None:
    import grokbasin.experiments.basin_selection  # noqa: F401
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
    "add",
    "get",
    "list_experiments",
    "out_dir",
    "run_experiment",
]

"""What an experiment is (see the ``experiments`` package docstring): grids per scale (data),
compute(grid, ctx) -> Output and plot(Output) -> figures, plus the Context they share.

Experiment modules import only this module (and ``common``); the catalogue lists them, so nothing
here, nor in the registry, is imported back by the modules it lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from grokbasin.errors import ConfigError
from grokbasin.experiments.output import ExperimentResult, finish

Scale = Literal["small", "paper"]
SCALES: tuple[str, ...] = ("small", "paper")
Grid = dict[str, Any]
GRID_KEYS = frozenset({"base", "grid", "points", "seeds", "samplers", "device", "trim"})
"""Keys every grid may have: the sweep-file structure, the samplers, and ``trim`` (why the grid
deviates from the paper, stated in the report)."""


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


@dataclass(frozen=True)
class Experiment:
    """A named experiment: grids per scale (data), compute, plot, and fixed method text."""

    name: str
    description: str
    grids: Mapping[str, Grid]
    compute: Callable[[Grid, Context], Output]
    plot: Callable[[Output], dict[str, Any]]
    method: str = ""
    keys: frozenset[str] = frozenset()  # the experiment's own grid keys beyond GRID_KEYS

    def __post_init__(self) -> None:
        for scale, grid in self.grids.items():
            check_grid(grid, GRID_KEYS | self.keys, f"{self.name} ({scale})")

    def run(self, ctx: Context, grid: Grid | None = None) -> ExperimentResult:
        """Compute (resumable), plot and write outputs for ``ctx.scale`` (or the given grid)."""
        g = grid if grid is not None else self.grids[ctx.scale]
        check_grid(g, GRID_KEYS | self.keys, self.name)
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


def check_grid(grid: Grid, allowed: frozenset[str], where: str) -> None:
    """Refuse, when the grid is defined, a key the experiment does not read (a misspelling)."""
    unknown = sorted(set(grid) - allowed)
    if unknown:
        raise ConfigError(
            f"grid of {where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
        )

"""Names of the data subsets of a built-in run (torch-free, so the config can check them).

``train`` (each replica's training split), ``val`` (its held-out pairs), ``all`` (every pair),
``class=K`` (every pair whose label is K); rows are built by ``grokbasin.llc.subsets``.
"""

from __future__ import annotations

from grokbasin.errors import ConfigError

NAMES_HELP = "train | val | all | class=K (0 <= K < p)"


def check_subset(name: str, p: int | None = None) -> str:
    """``name`` if it names a subset (and, given p, a class that exists), else ConfigError."""
    if name in ("train", "val", "all"):
        return name
    if name.startswith("class="):
        k = name.removeprefix("class=")
        if k.isdigit() and (p is None or int(k) < p):
            return name
    where = f" (p = {p})" if p is not None else ""
    raise ConfigError(f"subset {name!r} is not one of {NAMES_HELP}{where}")

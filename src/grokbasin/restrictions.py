"""Weight-restricted LLC specs: named lists of parameter-name globs (syntax only, torch-free).

A restriction ``NAME -> [PATTERN, ...]`` samples only the parameters whose names match one of the
``fnmatch`` globs; every other weight stays at w*. ``PATTERN#head=H`` keeps, of the matched
parameters, the attention weights that have heads, and selects head H's slice of them (the
per-model head layouts and the masks themselves: ``grokbasin.llc.restrict``). On the command line
``--restrict NAME=PATTERN[,PATTERN]`` gives one restriction; the flag repeats.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from grokbasin.errors import ConfigError

NAME_RE = re.compile(r"[A-Za-z0-9_.+-]+")
"""What a restriction's name may contain (it labels rows, legends and the CLI)."""
HEAD_RE = re.compile(r"(?P<glob>.*)#head=(?P<head>\d+)")
SYNTAX = "NAME=PATTERN[,PATTERN] (fnmatch globs over parameter names; PATTERN#head=H: head H)"


def split_pattern(pattern: str) -> tuple[str, int | None]:
    """(glob, head) of one pattern: head None unless it ends in ``#head=H``."""
    m = HEAD_RE.fullmatch(pattern)
    return (m["glob"], int(m["head"])) if m else (pattern, None)


def check(restrict: Any) -> dict[str, list[str]]:
    """A restriction mapping validated: names as :data:`NAME_RE`, each a non-empty list of
    non-empty patterns (``#`` only as ``#head=H``); a one-line ValueError otherwise."""
    if not isinstance(restrict, Mapping):
        raise ValueError(f"must map NAME to a list of parameter-name patterns, got {restrict!r}")
    out: dict[str, list[str]] = {}
    for name, patterns in restrict.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValueError(f"restriction name {name!r}: use letters, digits and _ . + - only")
        if isinstance(patterns, str) or not isinstance(patterns, Sequence) or not patterns:
            raise ValueError(f"restriction {name!r}: give a non-empty list of patterns")
        for p in patterns:
            glob = split_pattern(p)[0] if isinstance(p, str) else ""
            if not glob or "#" in glob or "," in glob:
                raise ValueError(
                    f"restriction {name!r}: pattern {p!r} is not a parameter-name glob "
                    "(optionally ending in #head=H)"
                )
        out[name] = list(patterns)
    return out


def parse_flags(items: Sequence[str]) -> dict[str, list[str]]:
    """``--restrict NAME=PATTERN[,PATTERN]`` flags as a restriction mapping (ConfigError naming
    the flag when one is malformed or a name repeats)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, eq, rest = item.partition("=")
        patterns = [p.strip() for p in rest.split(",")]
        name = name.strip()
        if not eq or not name or not all(patterns):
            raise ConfigError(f"--restrict: got {item!r}; use {SYNTAX}")
        if name in out:
            raise ConfigError(f"--restrict: restriction {name!r} given twice")
        try:
            out |= check({name: patterns})
        except ValueError as e:
            raise ConfigError(f"--restrict: {e}") from None
    return out

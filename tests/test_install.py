"""Installs as users do them: every third-party import of the package is a declared dependency,
and no module imports another that imports it back (import circles)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "grokbasin"
DIST_OF = {"yaml": "pyyaml"}  # import name -> distribution name where they differ
OPTIONAL = {"ray"}  # imported inside functions only, installed with the `ray` extra


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            # `from pkg import mod` names the module; `from mod import f` the module itself
            subs = {f"{n.module}.{a.name}" for a in n.names}
            known = {s for s in subs if _is_module(s)}
            out |= known if known == subs else known | {n.module}
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC.parent / rel).with_suffix(".py").exists() or (SRC.parent / rel).is_dir()


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}


def test_every_import_is_a_declared_dependency():
    declared = _declared()
    missing = {}
    for path in SRC.rglob("*.py"):
        for mod in _imports(path, top_level_only=False):
            top = mod.split(".")[0]
            if top in sys.stdlib_module_names or top == "grokbasin" or top in OPTIONAL:
                continue
            if DIST_OF.get(top, top).lower() not in declared:
                missing.setdefault(top, path.relative_to(ROOT).as_posix())
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_no_import_circles_between_modules():
    # imports inside functions count too: a late import hides a circle, it does not break it
    mods = {_module_of(p): p for p in SRC.rglob("*.py")}
    graph = {
        m: {i for i in _imports(p, top_level_only=False) if i in mods and i != m}
        for m, p in mods.items()
    }
    for m, deps in graph.items():  # a package's __init__ importing its own modules is fine
        graph[m] = {
            d for d in deps if not (d.startswith(m + ".") and mods[m].name == "__init__.py")
        }
    cycles = []
    for a, deps in graph.items():
        for b in deps:
            if a in _reach(graph, b):
                cycles.append((a, b))
    assert not cycles, f"import circles: {sorted(cycles)[:6]}"


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for d in graph.get(todo.pop(), ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen

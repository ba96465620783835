"""Shared fixtures: small configs that train in a second or two on a CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from grokbasin.cli import main
from grokbasin.config import build_config

TINY = {
    "task": {"p": 11, "frac": 0.5},
    "model": {"width": 24},
    "train": {"epochs": 60, "checkpoint_every": 20, "batch_size": 16, "lr": [3e-3]},
}


@pytest.fixture
def tiny_cfg():
    """A factory for tiny validated configs with dotted overrides."""

    def make(**overrides):
        return build_config(TINY, {k.replace("__", "."): v for k, v in overrides.items()})

    return make


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """`grokbasin ARGS` run in this process from ``cwd`` -> (exit code, stdout, stderr).

    Goes through ``main()``: the same error handling as the console script.
    """

    def run(args: list[str], cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["grokbasin", *args])
        try:
            main()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    return run

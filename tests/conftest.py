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


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """Two tiny finished runs (seeds 0 and 1) under one root."""
    from grokbasin.train.runner import train

    root = tmp_path_factory.mktemp("bound")
    runs = [
        train(build_config(TINY, {"train.seeds": [s]}), root, progress=False).run for s in (0, 1)
    ]
    return root, runs


@pytest.fixture
def pair(trained_pair, tmp_path):
    """A fresh copy of the two runs for one test to damage."""
    import shutil

    from grokbasin.store.rundir import RunDir

    root, runs = trained_pair
    shutil.copytree(root, tmp_path / "runs")
    return [RunDir(tmp_path / "runs" / r.path.name) for r in runs]


@pytest.fixture
def refused(run_cli, tmp_path):
    """Run `grokbasin ARGS`; assert exit 2 with one line holding every needle; the line."""

    def check(args: list[str], cwd: Path, *needles: str) -> str:
        rc, out, err = run_cli(args, cwd)
        assert rc == 2, out + err
        line = err.strip()
        assert "Traceback" not in err and len(line.splitlines()) == 1, err
        for n in needles:
            assert n in line, line
        return line

    return check


MODEL = """
import torch
def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
"""


@pytest.fixture
def external_inputs(tmp_path) -> list[str]:
    """A model file, data and four checkpoints for `llc external`: its flags."""
    import textwrap

    import torch

    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    sys.path.insert(0, str(tmp_path))
    try:
        import model  # type: ignore[import-not-found]

        net = model.make()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("model", None)
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    torch.save({"X": X, "Y": net(X).detach()}, tmp_path / "data.pt")
    (tmp_path / "ck").mkdir()
    for s in (10, 20, 30, 40):
        torch.save(
            {k: v + 0.01 * s for k, v in net.state_dict().items()}, tmp_path / f"ck/s_{s}.pt"
        )
    return [
        *("--model", f"{tmp_path / 'model.py'}:make", "--checkpoints", str(tmp_path / "ck")),
        *("--loss", "mse", "--data", str(tmp_path / "data.pt"), "--out", str(tmp_path / "runs")),
        *("--chains", "2", "--draws", "300", "--burnin", "10", "--quiet", "--json"),
    ]

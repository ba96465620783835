"""Concurrency: processes sharing a run directory serialise on its lock (the later one waits), so
the result is always the result of a solo run. Real `grokbasin` subprocesses throughout."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from grokbasin.config import build_config
from grokbasin.llc.trajectory import estimate_run
from grokbasin.store.rundir import LOCK_NAME, RunDir, load_tensors, locked, read_parquet
from grokbasin.train.runner import train

CFG = {
    "task": {"p": 11, "frac": 0.5},
    "model": {"width": 24},
    "train": {"batch_size": 8, "lr": [3e-3], "epochs": 200, "checkpoint_every": 20},
}

TRAIN = [
    *("--p", "11", "--frac", "0.5", "--width", "24", "--batch-size", "8", "--lr", "3e-3"),
    *("--epochs", "200", "--checkpoint-every", "20", "--seeds", "0,1", "--quiet"),
]
LLC = [*("--chains", "2", "--draws", "20", "--burnin", "10", "--llc-batch-size", "16")]


def solo(root) -> RunDir:
    """The reference: the same config trained alone, in this process."""
    cfg = build_config(CFG, {"train.seeds": [0, 1]})
    return train(cfg, root, progress=False).run


def grokbasin(*args: str) -> list[str]:
    return [sys.executable, "-m", "grokbasin", *args]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(grokbasin(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


def same_run(a: RunDir, b: RunDir) -> None:
    """Equal metrics and bit-identical checkpoints and resume state."""
    assert read_parquet(a.metrics).to_pylist() == read_parquet(b.metrics).to_pylist()
    assert a.checkpoint_epochs() == b.checkpoint_epochs() == list(range(0, 201, 20))
    for path_a, path_b in [(a.state, b.state)] + [
        (a.checkpoint(e), b.checkpoint(e)) for e in a.checkpoint_epochs()
    ]:
        ta, tb = load_tensors(path_a)[0], load_tensors(path_b)[0]
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_two_trains_started_together_equal_a_solo_run(tmp_path):
    solo_run = solo(tmp_path / "solo")
    procs = [start("train", *TRAIN, "--out", str(tmp_path / "shared"), "--json") for _ in (0, 1)]
    results = [json.loads(finish(p)[0]) for p in procs]
    assert sorted(r["status"] for r in results) == ["cached", "trained"]
    shared = RunDir(results[0]["run_dir"])
    assert shared.path.name == solo_run.path.name and shared.is_trained()
    same_run(solo_run, shared)


def test_second_process_waits_for_the_lock_and_writes_nothing_meanwhile(tmp_path):
    """Deterministic version of the race: this test holds the lock, `train` must wait."""
    root = tmp_path / "runs"
    ref = solo(tmp_path / "probe")
    run = RunDir(root / ref.path.name)
    with locked([run.path], create=True):
        proc = start("train", *TRAIN, "--out", str(root))
        deadline = time.time() + 120
        err = b""
        while time.time() < deadline and b"waiting" not in err:
            time.sleep(0.2)
            err += proc.stderr.read1() if proc.stderr else b""  # type: ignore[attr-defined]
        assert b"waiting" in err and b"in use by another grokbasin process" in err
        time.sleep(1.0)
        assert proc.poll() is None, "must still be waiting"
        assert sorted(p.name for p in run.path.iterdir()) == [LOCK_NAME]  # nothing written
    out, _ = finish(proc)
    assert out.strip().splitlines()[-1] == str(run.path)
    same_run(ref, run)


@pytest.mark.slow
def test_llc_started_during_training_sees_the_finished_run(tmp_path):
    """`llc` launched mid-training waits, then estimates every checkpoint as on a solo run."""
    solo_run = solo(tmp_path / "solo")
    llc = build_config({"llc": {"chains": 2, "draws": 20, "burnin": 10, "batch_size": 16}}, {}).llc
    estimate_run(solo_run.path, llc, "cpu", progress=False)

    root = tmp_path / "shared"
    trainer = start("train", *TRAIN, "--out", str(root))
    run = RunDir(root / solo_run.path.name)
    deadline = time.time() + 120
    while time.time() < deadline and not run.config.exists():
        time.sleep(0.02)
    assert run.config.exists() and not run.is_trained(), "llc must start while training runs"
    sampler = start("llc", str(run.path), *LLC, "--quiet")
    finish(trainer)
    finish(sampler)
    a, b = read_parquet(solo_run.llc).to_pylist(), read_parquet(run.llc).to_pylist()
    assert sorted({r["epoch"] for r in b}) == list(range(0, 201, 20))  # all checkpoints
    key = ("epoch", "replica", "chain", "nbeta", "llc", "init_loss", "mean_loss")
    assert [tuple(r[k] for k in key) for r in a] == [tuple(r[k] for k in key) for r in b]
    same_run(solo_run, run)


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    """The kernel drops a dead process's flock: no stale lock ever blocks a run."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom grokbasin.store.rundir import locked\n"
            f"with locked([{str(run)!r}]):\n    print('held', flush=True)\n    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    holder.kill()
    holder.wait()
    t0 = time.time()
    with locked([run], wait=True):
        pass
    assert time.time() - t0 < 5

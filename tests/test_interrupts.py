"""Interrupts keep finished work, `llc external` holds the run lock, and pool workers die with
their parent. Real `grokbasin` subprocesses, at the machine's default thread count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grokbasin.config import build_config
from grokbasin.store.rundir import RunDir, read_parquet
from grokbasin.train.runner import train

CFG = {
    "task": {"p": 7, "frac": 0.6},
    "model": {"width": 8},
    "train": {"epochs": 30, "checkpoint_every": 10, "batch_size": 8, "lr": [3e-3]},
}
SLOW = ["--chains", "2", "--draws", "1500", "--burnin", "0", "--llc-batch-size", "8", "--quiet"]


def grokbasin(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "grokbasin", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def wait_for(cond, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def llc_rows(run: RunDir) -> list[dict]:
    return read_parquet(run.llc).to_pylist() if run.llc.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_sampling_keeps_finished_chunks_and_resume_is_exact(tmp_path, sig):
    """Four checkpoints sampled in chunks of one: the signal comes after the first chunk is
    written; the process exits within a second, keeping every finished chunk, and the rerun
    samples only the rest, giving the numbers of an uninterrupted run."""
    run = train(build_config(CFG), tmp_path / "runs", progress=False).run
    ref = train(build_config(CFG), tmp_path / "ref", progress=False).run
    chunked = {"GROKBASIN_LLC_CHUNK": "1"}
    proc = grokbasin("llc", str(run.path), *SLOW, env=chunked)
    wait_for(lambda: len(llc_rows(run)) > 0 or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[1].decode()
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    latency = time.monotonic() - sent
    assert proc.returncode == 128 + sig, err.decode()
    assert latency < 2.0, f"took {latency:.2f} s to stop"
    kept = {r["epoch"] for r in llc_rows(run)}
    assert kept and kept < set(range(0, 31, 10)), kept
    assert (
        subprocess.run(
            [sys.executable, "-m", "grokbasin", "llc", str(ref.path), *SLOW],
            env={**os.environ, **chunked},
            capture_output=True,
        ).returncode
        == 0
    )
    rerun = grokbasin("llc", str(run.path), *SLOW, env=chunked)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert (
        f"{4 - len(kept)} checkpoints sampled, {len(kept)} already" in out.decode() + err.decode()
    )
    key = lambda r: (r["epoch"], r["chain"])  # noqa: E731
    got = sorted(llc_rows(run), key=key)
    want = sorted(llc_rows(ref), key=key)
    assert [(key(r), r["llc"]) for r in got] == [(key(r), r["llc"]) for r in want]


def test_two_external_processes_into_one_out_give_the_sequential_result(external_inputs):
    """Different samplers into one run folder: both processes' rows survive (12 + 12 kept)."""
    import json

    procs = [grokbasin("llc", "external", *external_inputs, "--llc-seed", s) for s in "12"]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.decode() for _, e in outs]
    run = RunDir(json.loads(outs[0][0])["run_dir"])
    rows = llc_rows(run)
    assert len({r["sampler_hash"] for r in rows}) == 2 and len(rows) == 2 * 4 * 2


def test_identical_external_processes_do_the_work_once(external_inputs):
    import json

    procs = [grokbasin("llc", "external", *external_inputs) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(len(o["computed"]) for o in outs) == [0, 4]
    assert len(llc_rows(RunDir(outs[0]["run_dir"]))) == 4 * 2


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sweep_workers_die_with_a_killed_parent(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "base: {task: {p: 7, frac: 0.6}, model: {width: 8}, "
        "train: {epochs: 200000, checkpoint_every: 100000, batch_size: 8}}\n"
        "grid: {model.width: [8, 9]}\n"
    )
    proc = grokbasin("sweep", str(sweep), "--workers", "2", "--out", str(tmp_path / "runs"))
    wait_for(lambda: len(children(proc.pid)) >= 2, timeout=120)
    kids = children(proc.pid)
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(alive(k) for k in kids), timeout=10)

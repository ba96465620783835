"""Integrity: every checkpoint, state and Parquet file carries a sha256 checked on read, a corrupt
file is one line naming it and the remedy, and killed writes leave no temporaries behind."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from grokbasin.errors import CorruptFileError
from grokbasin.store.db import StoreWarning, list_runs
from grokbasin.store.rundir import (
    RunDir,
    atomic_write,
    load_tensors,
    read_parquet,
    save_tensors,
    write_parquet,
)
from grokbasin.train.runner import train


def flip64(path: Path, where: str = "data") -> None:
    """Invert 64 bytes in the tensor data (safetensors) or the data pages (Parquet)."""
    data = bytearray(path.read_bytes())
    if where == "data" and path.suffix == ".safetensors":
        start = 8 + int.from_bytes(data[:8], "little") + 16
    else:
        start = 16  # just past "PAR1" and the first page header: inside the data pages
    for i in range(start, min(start + 64, len(data) - 12)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture
def trained(tmp_path, tiny_cfg):
    return train(tiny_cfg(), tmp_path / "runs", progress=False).run


def test_round_trip_and_checksum_in_metadata(tmp_path):
    t = {"W": torch.randn(3, 5, 7), "b": torch.arange(4, dtype=torch.int64)}
    save_tensors(tmp_path / "a.safetensors", t, {"epoch": 7})
    back, meta = load_tensors(tmp_path / "a.safetensors")
    assert meta == {"epoch": 7} and all(torch.equal(t[k], back[k]) for k in t)
    write_parquet(tmp_path / "m.parquet", [{"epoch": e, "x": e / 3} for e in range(50)])
    assert read_parquet(tmp_path / "m.parquet").to_pylist()[7] == {"epoch": 7, "x": 7 / 3}


@pytest.mark.parametrize("name", ["checkpoint", "state", "metrics"])
def test_flipped_bytes_are_detected(trained, name):
    path = {"checkpoint": trained.checkpoint(40), "state": trained.state}.get(name, trained.metrics)
    flip64(path)
    read = read_parquet if path.suffix == ".parquet" else load_tensors
    with pytest.raises(CorruptFileError, match="checksum mismatch") as e:
        read(path)
    assert str(path) in str(e.value) and "delete" in str(e.value)


def test_altered_metadata_is_detected(tmp_path):
    """The checksum covers the header too: an epoch rewritten in place is caught."""
    p = tmp_path / "a.safetensors"
    save_tensors(p, {"W": torch.ones(2, 2)}, {"epoch": 40})
    p.write_bytes(p.read_bytes().replace(b'"40"', b'"90"'))
    with pytest.raises(CorruptFileError, match="checksum"):
        load_tensors(p)


def test_file_without_checksum_is_refused_unless_asked(tmp_path, monkeypatch):
    """A file without a checksum is unverified: refused, or read as it is on explicit request."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    save_file({"W": torch.ones(2)}, tmp_path / "old.safetensors", metadata={"epoch": "3"})
    pq.write_table(pa.table({"epoch": [1]}), tmp_path / "old.parquet")
    monkeypatch.delenv("GROKBASIN_UNVERIFIED_OK", raising=False)
    for f in ("old.safetensors", "old.parquet"):
        with pytest.raises(CorruptFileError, match="no checksum.*--unverified-ok"):
            (load_tensors if f.endswith("tensors") else read_parquet)(tmp_path / f)
    monkeypatch.setenv("GROKBASIN_UNVERIFIED_OK", "1")
    assert load_tensors(tmp_path / "old.safetensors")[1] == {"epoch": 3}
    assert read_parquet(tmp_path / "old.parquet").to_pylist() == [{"epoch": 1}]


def test_resume_from_corrupt_state_is_one_line(trained, tiny_cfg, run_cli):
    """A killed run resumes from state.safetensors: corrupt, it refuses (no training on garbage)."""
    prov = json.loads(trained.provenance.read_text())
    trained.provenance.write_text(json.dumps({**prov, "finished": False}))
    flip64(trained.state)
    rc, _, err = run_cli(
        [
            "train",
            *("--p", "11", "--frac", "0.5", "--width", "24", "--epochs", "60"),
            *("--checkpoint-every", "20", "--batch-size", "16", "--lr", "3e-3"),
            *("--out", "runs", "--quiet"),
        ],
        trained.path.parent.parent,
    )
    line = one_line(err)
    rel = trained.state.relative_to(trained.path.parent.parent)
    assert rc == 2 and str(rel) in line and "delete it" in line


def test_corrupt_checkpoint_stops_llc_in_one_line(trained, run_cli):
    flip64(trained.checkpoint(20))
    rc, _, err = run_cli(
        ["llc", str(trained.path), "--chains", "1", "--draws", "5", "--burnin", "0", "--quiet"],
        trained.path.parent,
    )
    line = one_line(err)
    assert rc == 2 and "epoch_20.safetensors" in line and "checksum mismatch" in line
    assert not trained.llc.exists()  # nothing estimated from a damaged checkpoint


def test_corrupt_metrics_leave_other_runs_listed(tmp_path, tiny_cfg):
    good = train(tiny_cfg(), tmp_path, progress=False).run
    bad = train(tiny_cfg(train__seeds=[4]), tmp_path, progress=False).run
    flip64(bad.metrics)
    with pytest.warns(StoreWarning, match="checksum mismatch"):
        cols, rows = list_runs(tmp_path)
    by = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    assert set(by) == {good.path.name, bad.path.name}
    assert by[good.path.name]["val_acc"] is not None and by[bad.path.name]["val_acc"] is None


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from grokbasin.store import rundir
    os.replace = lambda *a: os._exit(9)  # die between writing the temporary and renaming it
    rundir.atomic_write(Path(sys.argv[1]), b"x" * 100000)
    """
)


def test_killed_write_leaves_no_temporary(tmp_path):
    """A writer killed mid-write leaves its temporary; the next writer of the folder removes it."""
    target = tmp_path / "run" / "metrics.parquet"
    res = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True)
    assert res.returncode == 9
    litter = list(target.parent.glob(".*.tmp"))
    assert len(litter) == 1 and not target.exists()  # the kill landed between write and rename
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and not list(target.parent.glob(".*.tmp"))


def test_opening_a_run_removes_dead_writers_temporaries(trained):
    """Taking a run's lock sweeps temporaries of dead processes anywhere in it (not live ones)."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    stale = trained.checkpoints / f".epoch_20.safetensors.{dead}.abcd1234.tmp"
    live = trained.path / f".metrics.parquet.{os.getpid()}.abcd1234.tmp"
    stale.write_bytes(b"half"), live.write_bytes(b"mine")
    with trained.lock():
        pass
    assert not stale.exists() and live.exists()


# ---- llc.parquet: one schema for every kind of run; a damaged file stops every writer, no row lost

SMALL_LLC = {"chains": 2, "draws": 5, "burnin": 0, "batch_size": 16}


def _estimate_paper_a(root: Path, tiny_cfg, step_size: float) -> RunDir:
    from grokbasin.config import LLCConfig
    from grokbasin.llc.trajectory import estimate_run

    run = train(tiny_cfg(), root, progress=False).run
    estimate_run(run.path, LLCConfig(**SMALL_LLC, step_size=step_size), progress=False)
    return run


def _estimate_paper_b(root: Path, step_size: float) -> RunDir:
    from grokbasin.experiments.paper_b.engine import run_all
    from grokbasin.experiments.paper_b.spec import expand_grid

    llc = {"step_size": step_size, "gamma": 1.0, "nbeta": 50.0, "burnin": 0, "draws": 5}
    grid = {
        "base": {"task": {"name": "low_rank", "n": 50, "d": 3}, "model": {"name": "low_rank"}},
        "points": [{"model.size": 1}],
        "seeds": [0],
    }
    grid["base"]["llc"] = llc | {"chains": 2}
    (cfg,) = expand_grid(grid)
    run_all([cfg], root)
    return RunDir(root / cfg.run_hash())


def _estimate_external(root: Path, step_size: float) -> RunDir:
    from grokbasin.llc.external import trajectory

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    X = torch.randn(32, 3)
    sds = [{k: v + 0.01 * i for k, v in net.state_dict().items()} for i in range(2)]
    res = trajectory(
        net, sds, torch.nn.functional.mse_loss, (X, X.sum(1, keepdim=True)), out=root,
        **SMALL_LLC, step_size=step_size,
    )  # fmt: skip
    return RunDir(res.run_dir)


@pytest.mark.parametrize("kind", ["paper_a", "paper_b", "external"])
def test_corrupt_llc_results_stop_every_writer_and_lose_no_rows(tmp_path, tiny_cfg, kind):
    from grokbasin.store.llc_results import SCHEMA

    def estimate(step_size: float) -> RunDir:
        if kind == "paper_a":
            return _estimate_paper_a(tmp_path, tiny_cfg, step_size)
        if kind == "paper_b":
            return _estimate_paper_b(tmp_path, step_size)
        return _estimate_external(tmp_path, step_size)

    run = estimate(1e-4)
    assert read_parquet(run.llc).schema.remove_metadata() == SCHEMA  # one schema, every kind
    flip64(run.llc)
    damaged = run.llc.read_bytes()
    with pytest.raises(CorruptFileError) as err:
        estimate(2e-4)  # another sampler: before, paper B dropped the first sampler's rows
    line = str(err.value)
    assert "\n" not in line and str(run.llc) in line and "delete" in line
    assert run.llc.read_bytes() == damaged  # nothing rewritten: every stored row is still there


def test_llc_summary_is_one_rule():
    from grokbasin.store.llc_results import llc_summary

    rows = [
        {"epoch": 5, "replica": 0, "chain": c, "nbeta": nb, "llc": v, "flags": f}
        for c, (nb, v, f) in enumerate(
            [(10.0, 1.0, ""), (10.0, 3.0, "low_ess"), (10.0 * (1 + 1e-7), 5.0, ""), (2.0, 99.0, "")]
        )
    ]
    (s,) = llc_summary(rows)  # modal nβ; 1e-7 relative off still matches (query.NBETA_RTOL)
    assert s["chains"] == 3 and s["llc_mean"] == pytest.approx(3.0)
    assert s["llc_std"] == pytest.approx(2.0)  # sample std (ddof 1) of 1, 3, 5
    assert s["flags"] == "low_ess" and "checkpoint" not in s
    (one,) = llc_summary(rows, 2.0)
    assert one["llc_mean"] == 99.0 and math.isnan(one["llc_std"])  # one chain: no spread

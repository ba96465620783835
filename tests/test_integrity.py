"""Integrity: every checkpoint, state and Parquet file carries a sha256 checked on read, a corrupt
file is one line naming it and the remedy, and killed writes leave no temporaries behind."""

from __future__ import annotations

import json
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

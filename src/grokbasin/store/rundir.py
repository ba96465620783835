"""The layout of one run directory (SPEC §5) and its atomic reads and writes.

    <root>/<hash>/config.yaml            resolved config, every default written out
                  provenance.json        versions, device, seeds, times, finished flag
                  metrics.parquet        one row per checkpoint x replica
                  checkpoints/epoch_<E>.safetensors   params, replica axis first
                  checkpoints/state.safetensors       params + optimiser state, last checkpoint
                  llc.parquet            one row per checkpoint x replica x chain (x n*beta)
                  figures/, report.html

Every file is written to a temporary name in the same folder and renamed into place, so a killed
process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from grokbasin.errors import CorruptFileError

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.safetensors$")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once: mkstemp files are 0600, results should not be


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` via a temp file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(path: Path, rows: list[dict[str, Any]] | pa.Table) -> None:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(path, sink.getvalue().to_pybytes())


def read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise CorruptFileError(f"{path}: unreadable Parquet file ({e})") from None


class RunDir:
    """Paths and typed I/O for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    provenance = property(lambda self: self.path / "provenance.json")
    metrics = property(lambda self: self.path / "metrics.parquet")
    llc = property(lambda self: self.path / "llc.parquet")
    checkpoints = property(lambda self: self.path / "checkpoints")
    state = property(lambda self: self.path / "checkpoints" / "state.safetensors")
    figures = property(lambda self: self.path / "figures")
    report = property(lambda self: self.path / "report.html")

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch}.safetensors"

    def checkpoint_epochs(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        found = (_EPOCH_FILE.match(f.name) for f in self.checkpoints.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save_tensors(
        self, path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> None:
        blob = save(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            metadata={k: json.dumps(v) for k, v in meta.items()},
        )
        atomic_write(path, blob)

    def load_tensors(
        self, path: Path, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata; a truncated or foreign file raises CorruptFileError."""
        try:
            tensors = load_file(path, device=str(device))
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
            raise CorruptFileError(f"{path}: unreadable checkpoint ({e})") from None
        return tensors, meta

    def load_checkpoint(
        self, epoch: int, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        path = self.checkpoint(epoch)
        if not path.exists():
            raise CorruptFileError(f"{path}: no checkpoint for epoch {epoch}")
        return self.load_tensors(path, device)[0]

    def read_provenance(self) -> dict[str, Any]:
        if not self.provenance.exists():
            return {}
        try:
            return json.loads(self.provenance.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorruptFileError(f"{self.provenance}: unreadable ({e})") from None

    def write_provenance(self, data: dict[str, Any]) -> None:
        atomic_write(self.provenance, json.dumps(data, indent=2, default=str).encode())

    def is_trained(self) -> bool:
        return bool(self.read_provenance().get("finished"))

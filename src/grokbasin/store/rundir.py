"""The layout of one run directory (SPEC §5), its atomic checksummed files and its lock.

    <root>/<hash>/config.yaml            resolved config, every default written out
                  provenance.json        versions, device, seeds, times, finished flag
                  metrics.parquet        one row per checkpoint x replica
                  checkpoints/epoch_<E>.safetensors   params, replica axis first
                  checkpoints/state.safetensors       params + optimiser state, last checkpoint
                  llc.parquet            one row per checkpoint x replica x chain (x n*beta)
                  figures/, report.html
                  .lock                  held (flock) by the one process writing the run

Every file is written to a temporary name in the same folder and renamed into place, so a killed
process leaves either the old file or the new one, never half of one; temporaries a killed
process left behind are deleted by the next writer. Safetensors and Parquet files carry a sha256
of their contents (in their own metadata, so file and checksum are renamed into place together),
verified on every read: a flipped byte is a CorruptFileError naming the file and the remedy. A
file without a checksum is unverified and refused unless GROKBASIN_UNVERIFIED_OK=1 (the CLI's
``--unverified-ok``) asks to read it as it is.

Every checkpoint is bound to its run: its metadata holds the run hash (``run``) and the number in
its file name (``checkpoint``), both checked on load, so a file copied in from another run or
renamed to another epoch is refused. The run's hash is the one recorded in provenance.json
(``run_hash``); runs made before it was recorded fall back to their folder name, and their
checkpoints (which lack ``run``) are accepted only there. Every checkpoint ``metrics.parquet``
records must exist (:meth:`RunDir.missing_files`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save

from grokbasin.errors import CorruptFileError, GrokbasinError

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.safetensors$")
_TMP_FILE = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .<name>.<pid>.<random>.tmp
_SUM_KEY = "grokbasin.sha256"
UNVERIFIED_ENV = "GROKBASIN_UNVERIFIED_OK"
EXTERNAL_SPEC = "external.json"  # an external run (llc external): no checkpoint files of its own
LOCK_NAME = ".lock"
F = TypeVar("F", bound=Callable[..., Any])
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once: mkstemp files are 0600, results should not be


class RunLockedError(GrokbasinError):
    """Another process holds the run directory's lock and we were asked not to wait."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: Path, pattern: str = ".*.tmp", recursive: bool = False) -> int:
    """Delete temporaries of dead processes under ``folder``; returns how many went."""
    if not folder.is_dir():
        return 0
    gone = 0
    for f in folder.rglob(pattern) if recursive else folder.glob(pattern):
        m = _TMP_FILE.match(f.name)
        if m and _pid_alive(int(m.group(1))):
            continue
        try:
            f.unlink()
            gone += 1
        except OSError:
            pass
    return gone


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write bytes to ``path`` via a temp file and rename (a dead writer's temp is removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(path.parent, f".{glob_escape(path.name)}.*.tmp")
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
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


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def recovery_hint(path: Path) -> str:
    """What the user can do about a corrupt run file (by its role in the run directory)."""
    name, run = path.name, path.parent
    if path.parent.name in ("checkpoints", "llc_traces"):
        run = path.parent.parent
    if name == "state.safetensors":
        return "delete it and re-run the same command to train the run again from epoch 0"
    if _EPOCH_FILE.match(name) or name == "metrics.parquet":
        return f"train the run again with `grokbasin runs --repair {run}` (or delete it)"
    if name == "llc.parquet" or path.parent.name == "llc_traces":
        return f"delete {run / 'llc.parquet'} and {run / 'llc_traces'}, then re-run grokbasin llc"
    return "delete it and re-run the command that wrote it"


def _corrupt(path: Path, why: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: {why}; {recovery_hint(path)}")


def unverified_ok() -> bool:
    """Whether the user asked to read files that carry no checksum as they are."""
    return os.environ.get(UNVERIFIED_ENV, "").strip().lower() in ("1", "true", "yes")


def _check_sum(path: Path, want: Any, got: Callable[[], str]) -> None:
    """Refuse a checksum mismatch, and a missing checksum unless :func:`unverified_ok`."""
    if want is None:
        if not unverified_ok():
            raise CorruptFileError(
                f"{path}: has no checksum, so it cannot be verified (rewritten outside "
                f"grokbasin?); restore it, or pass --unverified-ok (or set {UNVERIFIED_ENV}=1) "
                "to read it as it is"
            )
        return
    if got() != (want.decode() if isinstance(want, bytes) else want):
        raise _corrupt(path, "checksum mismatch, the file is corrupt")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: missing; {recovery_hint(path)}") from None
    except OSError as e:
        raise CorruptFileError(f"{path}: unreadable ({e.strerror or e})") from None


# ------------------------------------------------------------------ Parquet


def _parquet_body(data: bytes | memoryview) -> memoryview:
    """Everything before the footer: the column chunks, i.e. all the data pages."""
    view = memoryview(data)
    if len(view) < 12 or bytes(view[:4]) != b"PAR1" or bytes(view[-4:]) != b"PAR1":
        raise ValueError("not a Parquet file")
    footer = int.from_bytes(view[-8:-4], "little")
    if footer + 12 > len(view):
        raise ValueError("truncated footer")
    return view[: len(view) - 8 - footer]


def parquet_bytes(table: pa.Table) -> bytes:
    """The Parquet serialisation of ``table`` with the sha256 of its pages in the footer."""

    def write(t: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink, write_page_checksum=True)
        return sink.getvalue().to_pybytes()

    first = write(table)
    digest = hashlib.sha256(_parquet_body(first)).hexdigest()
    meta = {**(table.schema.metadata or {}), _SUM_KEY.encode(): digest.encode()}
    out = write(table.replace_schema_metadata(meta))
    if bytes(_parquet_body(out)) != bytes(_parquet_body(first)):  # pragma: no cover - invariant
        raise RuntimeError("Parquet pages changed with the footer metadata")
    return out


def write_parquet(path: Path, rows: list[dict[str, Any]] | pa.Table) -> None:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    atomic_write(path, parquet_bytes(table))


def _arrow_owned(data: bytes) -> pa.Buffer:
    """``data`` copied into memory Arrow owns. Arrow's reader threads may drop the last reference
    to the buffer they read; freeing a buffer that wraps a Python object needs the GIL, and a
    thread that asks for it while the interpreter exits aborts the process ("terminate called
    without an active exception", seen when a process that waited on a run's lock exits)."""
    buf = pa.allocate_buffer(len(data))
    memoryview(buf).cast("B")[:] = data
    return buf


def read_parquet(path: Path) -> pa.Table:
    """A Parquet file whose recorded checksum matches (one without: see :func:`unverified_ok`)."""
    data = _read_bytes(path)
    try:
        body = _parquet_body(data)
        owned = _arrow_owned(data)
        schema = pq.read_schema(pa.BufferReader(owned))
        want = (schema.metadata or {}).get(_SUM_KEY.encode())
        _check_sum(path, want, lambda: hashlib.sha256(body).hexdigest())
        table = pq.read_table(pa.BufferReader(owned), page_checksum_verification=True)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise _corrupt(path, f"unreadable Parquet file ({str(e).splitlines()[0][:120]})") from None
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != _SUM_KEY.encode()}
    return table.replace_schema_metadata(meta or None)


# ------------------------------------------------------------------ safetensors


def _st_parts(data: bytes | memoryview) -> tuple[dict[str, Any], memoryview]:
    """The parsed header and the tensor data of a safetensors blob."""
    view = memoryview(data)
    if len(view) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(view[:8], "little")
    if n > len(view) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(bytes(view[8 : 8 + n]))
    if not isinstance(header, dict):
        raise ValueError("header is not a mapping")
    return header, view[8 + n :]


def _st_digest(header: dict[str, Any], body: memoryview) -> str:
    """sha256 over the tensor table, the metadata (less the checksum) and the tensor bytes."""
    head = dict(header)
    meta = {k: v for k, v in (head.pop("__metadata__", None) or {}).items() if k != _SUM_KEY}
    canon = json.dumps({"tensors": head, "meta": meta}, sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(canon.encode())
    h.update(body)
    return h.hexdigest()


def tensors_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """Safetensors bytes of ``tensors`` with JSON ``meta`` and their checksum in the header."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    md = {k: json.dumps(v) for k, v in meta.items()}
    first = save(clean, metadata=md)
    digest = _st_digest(*_st_parts(first))
    return save(clean, metadata={**md, _SUM_KEY: digest})


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    atomic_write(path, tensors_bytes(tensors, meta))


def load_tensors(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata after the checksum check; a damaged file raises CorruptFileError."""
    data = _read_bytes(path)
    try:
        header, body = _st_parts(data)
        raw = dict(header.get("__metadata__") or {})
        want = raw.pop(_SUM_KEY, None)
        _check_sum(path, want, lambda: _st_digest(header, body))
        tensors = load_bytes(data)
        meta = {k: json.loads(v) for k, v in raw.items()}
    except (SafetensorError, ValueError, TypeError, AttributeError) as e:
        raise _corrupt(path, f"unreadable checkpoint ({str(e).splitlines()[0][:120]})") from None
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


# ------------------------------------------------------------------ locking

_LOCKS: dict[tuple[int, Path], FileLock] = {}
# Keep the lock file (unlinking a flock'd file races) and never degrade to a "soft" lock that a
# killed process would leave behind; older filelock versions do both of these by default.
_LOCK_OPTIONS = {
    k: v
    for k, v in {"preserve_lock_file": True, "fallback_to_soft": False}.items()
    if k in inspect.signature(FileLock.__init__).parameters
}


def _lock_for(path: Path) -> FileLock:
    """One reentrant lock object per (process, run directory)."""
    key = (os.getpid(), path)
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(path / LOCK_NAME, thread_local=False, **_LOCK_OPTIONS)
    return _LOCKS[key]


@contextmanager
def _hold(path: Path, wait: bool, create: bool) -> Iterator[None]:
    from grokbasin.progress import console

    if path.exists() and not path.is_dir():
        raise GrokbasinError(f"{path}: is a file, not a run directory")
    if not create and not path.exists():
        raise GrokbasinError(f"{path}: no such run directory")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        lock = _lock_for(path)
        first = not lock.is_locked
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                raise RunLockedError(
                    f"{path}: in use by another grokbasin process (it holds {path / LOCK_NAME})"
                ) from None
            console.print(
                f"waiting: {path} is in use by another grokbasin process; "
                "this one continues when that one finishes",
                highlight=False,
                soft_wrap=True,
            )
            lock.acquire()
    except OSError as e:
        raise GrokbasinError(
            f"{path}: run directory is not writable ({e.strerror or e}); make it writable "
            "or choose another --out"
        ) from None
    try:
        if first:
            clean_stale_tmp(path, recursive=True)
        yield
    finally:
        lock.release()


@contextmanager
def locked(paths: Iterable[str | Path], wait: bool = True, create: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of every run directory in ``paths`` (taken in sorted order).

    Reentrant within a process; a second process waits (``wait``) or gets RunLockedError. The
    kernel drops a dead process's lock, so a killed run never leaves a stale one.
    """
    with ExitStack() as stack:
        for p in sorted({Path(p).resolve() for p in paths}):
            stack.enter_context(_hold(p, wait, create))
        yield


def holds_run_locks(arg: str, many: bool = False) -> Callable[[F], F]:
    """Decorate a function so it runs holding the lock of the run directory (or directories,
    ``many``) passed as its argument ``arg``: one line makes any writer of run files safe."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            if many:  # materialise once: an iterator would be consumed by the locking
                bound.arguments[arg] = list(bound.arguments[arg])
            value = bound.arguments[arg]
            with locked(value if many else [value]):
                return fn(*bound.args, **bound.kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def check_out_root(root: str | Path) -> Path:
    """The output root, refused in one line if it cannot hold run directories (nothing made)."""
    base = Path(root)
    probe = base
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if base.exists() and not base.is_dir():
        raise GrokbasinError(f"--out: {base} is an existing file, not a folder; give a folder")
    if probe.exists() and not probe.is_dir():
        raise GrokbasinError(f"--out: {probe} is an existing file, so {base} cannot be made")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise GrokbasinError(f"--out: {probe} is not writable; give a folder you can write")
    return base


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

    def lock(self, wait: bool = True, create: bool = False):
        """Context manager holding this run directory's exclusive lock (see :func:`locked`)."""
        return locked([self.path], wait, create)

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
        save_tensors(path, tensors, meta)

    def load_tensors(
        self, path: Path, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata; a truncated, altered or foreign file raises CorruptFileError."""
        return load_tensors(path, device)

    def identity(self) -> str:
        """The run hash this directory's files are bound to (recorded, else the folder name)."""
        return str(self.read_provenance().get("run_hash") or self.path.name)

    def save_checkpoint(
        self, epoch: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> None:
        """Write checkpoint ``epoch`` bound to this run (its hash and number in the metadata)."""
        bound = {**meta, "run": self.identity(), "checkpoint": epoch}
        self.save_tensors(self.checkpoint(epoch), tensors, bound)

    def check_bound(self, path: Path, meta: dict[str, Any], number: int | None = None) -> None:
        """Refuse a file whose metadata names another run, or another number than its name."""
        owner = meta.get("run")
        legacy = owner is None and "run_hash" not in self.read_provenance()
        if owner != self.identity() and not legacy:
            whose = f"run {owner}" if owner else "no run (written before files were bound)"
            raise CorruptFileError(
                f"{path}: belongs to {whose}, not to run {self.identity()}; it was copied in "
                f"from elsewhere: {recovery_hint(path)}"
            )
        says = meta.get("checkpoint", meta.get("epoch", meta.get("step")))
        if number is not None and says is not None and int(says) != number:
            raise CorruptFileError(
                f"{path}: holds checkpoint {says}, not {number} as its name says (renamed or "
                f"copied over?); {recovery_hint(path)}"
            )

    def load_checkpoint(
        self, epoch: int, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Checkpoint ``epoch``, after checking its checksum and that it belongs here."""
        path = self.checkpoint(epoch)
        if not path.exists():
            raise CorruptFileError(f"{path}: no checkpoint for epoch {epoch}")
        tensors, meta = self.load_tensors(path, device)
        self.check_bound(path, meta, epoch)
        return tensors

    def recorded_epochs(self) -> list[int]:
        """Checkpoint epochs that metrics.parquet says were saved."""
        if not self.metrics.exists():
            return []
        return sorted({int(e) for e in read_parquet(self.metrics).column("epoch").to_pylist()})

    def missing_files(self) -> list[str]:
        """What a trained or training run lacks: config, metrics, recorded checkpoints."""
        out = [] if self.config.exists() else ["config.yaml"]
        prov = self.read_provenance()
        if (prov.get("finished") or self.state.exists()) and not self.metrics.exists():
            out.append("metrics.parquet")
        if (self.path / EXTERNAL_SPEC).exists():
            return out
        have = set(self.checkpoint_epochs())
        gone = [e for e in self.recorded_epochs() if e not in have]
        if gone:
            out.append(f"checkpoints of epochs {_short_list(gone)} (listed in metrics.parquet)")
        return out

    def read_provenance(self) -> dict[str, Any]:
        if not self.provenance.exists():
            return {}
        try:
            data = json.loads(self.provenance.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _corrupt(self.provenance, f"unreadable ({e.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise _corrupt(self.provenance, "not a JSON object")
        return data

    def write_provenance(self, data: dict[str, Any]) -> None:
        atomic_write(self.provenance, json.dumps(data, indent=2, default=str).encode())

    def in_use(self) -> bool:
        """Whether another process holds this run directory's lock (e.g. is training it)."""
        lock = _lock_for(self.path.resolve())
        if lock.is_locked:
            return False  # held by this process
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:
            return False
        lock.release()
        return False

    def is_trained(self) -> bool:
        """Finished, with every file its training wrote still there."""
        return bool(self.read_provenance().get("finished")) and not self.missing_files()


def _short_list(xs: list[int], n: int = 8) -> str:
    """``[1, 2, 3]``, or the first ``n`` and how many more."""
    head = ", ".join(map(str, xs[:n]))
    return f"[{head}{f', … {len(xs) - n} more' if len(xs) > n else ''}]"

"""The inputs of an external LLC run, loaded and validated before anything is written.

Each input is a Python object or a spec string (what the CLI passes): the model an
``nn.Module`` or ``'FILE.py:factory'``; the loss a callable ``loss(pred, y) -> mean loss`` or
``'mse'`` | ``'cross_entropy'`` | ``'FILE.py:fn'``; the data tensors ``(X, Y)``, a ``Dataset``, a
``DataLoader`` or ``'DATA.pt'`` (a dict with tensors X, Y and optionally X_val, Y_val); the
checkpoints state_dicts or paths (``.pt``/``.pth`` via ``torch.load``, ``.safetensors``), a folder
or a glob. Every problem is a ConfigError naming the input and what is allowed.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import importlib.util
import inspect
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from grokbasin.errors import ConfigError

SPEC_FILE = "external.json"
"""The run directory's record of how to rebuild its inputs (model, loss, data, checkpoints)."""

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss,
    "cross_entropy": F.cross_entropy,
}
CKPT_SUFFIXES = (".pt", ".pth", ".safetensors")
_NUMBER = re.compile(r"(\d+)")
_WRAPPERS = ("state_dict", "model_state_dict", "model")


@dataclass
class Inputs:
    """Validated inputs: model (eval mode, on device), loss, data, and checkpoints by step."""

    model: torch.nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    X: torch.Tensor
    Y: torch.Tensor
    steps: list[int]
    labels: list[str]  # file name or "state_dict[i]" per checkpoint
    params: list[dict[str, torch.Tensor]]  # sampled parameters of each checkpoint
    val: tuple[torch.Tensor, torch.Tensor] | None = None
    batch_hint: int | None = None  # a DataLoader's batch size
    spec: dict[str, Any] = field(default_factory=dict)  # how to rebuild (None: a Python object)
    key: str = ""  # hash of everything that changes an estimate except the sampler

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_params(self) -> int:
        return sum(v.numel() for v in self.params[0].values())


def default_max_bytes() -> int:
    """Half the machine's available memory (4 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def load_callable(spec: str, what: str) -> Callable:
    """The object NAME defined in FILE.py, for a spec 'FILE.py:NAME'."""
    path, sep, name = str(spec).rpartition(":")
    if not sep or not path.endswith(".py") or not name.isidentifier():
        raise ConfigError(f"{what}: got {spec!r}; use FILE.py:NAME")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: {p}: no such file")
    mod_name = "grokbasin_user_" + hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(mod_name, p)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"{what}: {p}: not importable as a Python module")
    mod = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(mod)
    except Exception as e:  # the user's code: any failure is their input's problem
        raise ConfigError(f"{what}: importing {p} failed: {_one_line(e)}") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        have = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_"))
        raise ConfigError(f"{what}: {p} defines no callable {name!r}; it has {have[:10]}")
    return fn


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def resolve_model(model: torch.nn.Module | str) -> tuple[torch.nn.Module, str | None]:
    """The module and its spec (None for a Python object)."""
    if isinstance(model, torch.nn.Module):
        return model, None
    factory = load_callable(str(model), "--model")
    try:
        built = factory()
    except Exception as e:
        raise ConfigError(f"--model: calling {model}() failed: {_one_line(e)}") from None
    if not isinstance(built, torch.nn.Module):
        raise ConfigError(f"--model: {model}() returned {type(built).__name__}, not an nn.Module")
    return built, _abs_spec(str(model))


def resolve_loss(loss: Callable | str) -> tuple[Callable, str | None]:
    """The loss function and its spec (the name, 'FILE.py:fn', or None for a Python object)."""
    if callable(loss):
        return loss, None
    if loss in LOSSES:
        return LOSSES[loss], str(loss)
    if ":" in str(loss) and ".py" in str(loss):
        return load_callable(str(loss), "--loss"), _abs_spec(str(loss))
    raise ConfigError(f"--loss: got {loss!r}; use mse, cross_entropy or FILE.py:fn")


def _abs_spec(spec: str) -> str:
    path, _, name = spec.rpartition(":")
    return f"{Path(path).resolve()}:{name}"


def resolve_data(
    data: Any, max_bytes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple | None, int | None, str | None]:
    """(X, Y, (X_val, Y_val) or None, a DataLoader's batch size, spec) from any accepted form."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    limit = max_bytes or default_max_bytes()
    val, hint, spec = None, None, None
    if isinstance(data, str | Path):
        X, Y, val = _load_data_file(Path(data))
        spec = str(Path(data).resolve())
    elif isinstance(data, tuple | list) and len(data) == 2 and all(map(torch.is_tensor, data)):
        X, Y = data
    elif isinstance(data, DataLoader):
        hint = data.batch_size
        if isinstance(data.dataset, IterableDataset):
            X, Y = _materialise(iter(data), limit, None)
        else:
            X, Y = _materialise_dataset(data.dataset, limit)
    elif isinstance(data, Dataset):
        X, Y = _materialise_dataset(data, limit)
    else:
        raise ConfigError(
            f"data: got {type(data).__name__}; give tensors (X, Y), a Dataset, a DataLoader "
            "or a DATA.pt file"
        )
    _check_xy(X, Y, "data")
    if val is not None:
        _check_xy(*val, "data (X_val, Y_val)")
    return X, Y, val, hint, spec


def _load_data_file(p: Path) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    if not p.is_file():
        raise ConfigError(f"--data: {p}: no such file")
    d = safe_torch_load(p, "--data")
    if not isinstance(d, Mapping) or not {"X", "Y"} <= set(d):
        got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
        raise ConfigError(f"--data: {p} must hold a dict with tensors 'X' and 'Y'; got {got}")
    val = None
    if "X_val" in d or "Y_val" in d:
        val = (d.get("X_val"), d.get("Y_val"))
    return d["X"], d["Y"], val


def _check_xy(X: Any, Y: Any, what: str) -> None:
    if not (torch.is_tensor(X) and torch.is_tensor(Y)):
        raise ConfigError(
            f"{what}: X and Y must be tensors, got {type(X).__name__}, {type(Y).__name__}"
        )
    if X.ndim == 0 or Y.ndim == 0 or X.shape[0] != Y.shape[0]:
        raise ConfigError(
            f"{what}: X and Y need the same number of rows, got shapes {tuple(X.shape)} and "
            f"{tuple(Y.shape)}"
        )
    if X.shape[0] < 2:
        raise ConfigError(f"{what}: need at least 2 samples, got {X.shape[0]}")
    for name, t in (("X", X), ("Y", Y)):
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ConfigError(
                    f"{what}: {name} has {bad} non-finite values (NaN or inf); clean the data"
                )


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def _materialise_dataset(ds: Any, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) items of a map-style Dataset stacked, refused when they would not fit."""
    try:
        n = len(ds)
    except TypeError:
        return _materialise(iter(ds), limit, None)
    if n == 0:
        raise ConfigError("data: the dataset is empty")
    x0, y0 = _pair(ds[0])
    per = x0.nbytes + y0.nbytes
    if per * n > limit:
        raise ConfigError(
            f"data: the dataset needs about {_gib(per * n)} in memory ({n} samples × {per} "
            f"bytes) but the limit is {_gib(limit)}; pass a subset or raise max_bytes"
        )
    from torch.utils.data import DataLoader

    return _materialise(iter(DataLoader(ds, batch_size=1024, shuffle=False)), limit, n)


def _pair(item: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(item, Mapping) and {"X", "Y"} <= set(item):
        item = (item["X"], item["Y"])
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise ConfigError(f"data: each item must be an (x, y) pair, got {type(item).__name__}")
    return torch.as_tensor(item[0]), torch.as_tensor(item[1])


def _materialise(batches: Any, limit: int, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (x, y) batches, refusing once the running size passes ``limit``."""
    xs, ys, total, rows = [], [], 0, 0
    for b in batches:
        x, y = _pair(b)
        if x.ndim == 0:  # an IterableDataset yielding single items
            x, y = x[None], y[None]
        total += x.nbytes + y.nbytes
        rows += x.shape[0]
        if total > limit:
            est = f"about {_gib(total * n / rows)}" if n else f"more than {_gib(total)}"
            raise ConfigError(
                f"data: the dataset needs {est} in memory but the limit is {_gib(limit)}; "
                "pass a subset or raise max_bytes"
            )
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ConfigError("data: the dataset is empty")
    return torch.cat(xs), torch.cat(ys)


def checkpoint_paths(spec: str | Path) -> list[Path]:
    """Files named by a glob, a folder (its .pt/.pth/.safetensors files) or one file."""
    s = str(spec)
    if any(ch in s for ch in "*?["):
        paths = [Path(p) for p in globmod.glob(s) if Path(p).is_file()]
        if not paths:
            raise ConfigError(f"--checkpoints: no files match {s!r}")
        return paths
    p = Path(s)
    if p.is_dir():
        paths = [f for f in p.iterdir() if f.suffix in CKPT_SUFFIXES and f.is_file()]
        if not paths:
            raise ConfigError(f"--checkpoints: {p} holds no {'/'.join(CKPT_SUFFIXES)} files")
        return paths
    if p.is_file():
        return [p]
    raise ConfigError(f"--checkpoints: {s}: no such file, folder or glob match")


def step_of(path: Path) -> int:
    """The checkpoint's step: the last number in its file name."""
    nums = _NUMBER.findall(path.stem)
    if not nums:
        raise ConfigError(
            f"--checkpoints: {path.name} has no number in its name; name checkpoints by step "
            "(step_100.pt) so they can be ordered"
        )
    return int(nums[-1])


def safe_torch_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``; a file holding other Python objects is refused in one
    line that does not suggest turning the safety off."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
            raise ConfigError(
                f"{what}: {path}: refused: it holds Python objects other than tensors, which "
                "could run code when loaded; save only tensors (e.g. model.state_dict())"
            ) from None
        raise ConfigError(f"{what}: {path}: unreadable ({_one_line(e)})") from None


MAX_STEP = 2**63 - 1  # what llc.parquet's int64 step column holds


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's state_dict (unwrapping {'state_dict': ...}-style training files)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(path)
        else:
            return _unwrap(safe_torch_load(path, "--checkpoints"), str(path))
    except Exception as e:
        raise ConfigError(f"--checkpoints: {path}: unreadable ({_one_line(e)})") from None
    return _unwrap(obj, str(path))


def _unwrap(obj: Any, label: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not all(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is not None:
            obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConfigError(
            f"--checkpoints: {label} is not a state_dict (a dict of tensors, or a dict with key "
            f"{'/'.join(_WRAPPERS)} holding one)"
        )
    return dict(obj)


def check_state_dict(sd: Mapping[str, torch.Tensor], model: torch.nn.Module, label: str) -> None:
    """Keys and shapes of ``sd`` equal the model's state_dict; parameters finite."""
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or extra:
        raise ConfigError(
            f"--checkpoints: {label}: keys do not match the model: missing {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{' …' if len(extra) > 5 else ''}"
        )
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ConfigError(
                f"--checkpoints: {label}: {k!r} has shape {tuple(sd[k].shape)}, the model's "
                f"is {tuple(v.shape)}"
            )
        if sd[k].is_floating_point() and not bool(torch.isfinite(sd[k]).all()):
            raise ConfigError(f"--checkpoints: {label}: {k!r} has non-finite values")


def resolve_checkpoints(
    checkpoints: str | Path | Sequence[Any], steps: Sequence[int] | None
) -> tuple[list[int], list[str], list[dict[str, torch.Tensor]], list[str] | None]:
    """(steps, labels, state_dicts, paths or None), ordered by step."""
    if isinstance(checkpoints, str | Path):
        items: list[Any] = checkpoint_paths(checkpoints)
    else:
        items = list(checkpoints)
    if not items:
        raise ConfigError("--checkpoints: no checkpoints given")
    if steps is not None and len(steps) != len(items):
        raise ConfigError(f"steps: {len(steps)} values for {len(items)} checkpoints")
    found = []
    for i, it in enumerate(items):
        if isinstance(it, str | Path):
            p = Path(it)
            if not p.is_file():
                raise ConfigError(f"--checkpoints: {p}: no such file")
            step = int(steps[i]) if steps is not None else step_of(p)
            found.append((step, p.name, load_state_dict(p), str(p.resolve())))
        else:
            sd = _unwrap(it, f"checkpoints[{i}]")
            step = int(steps[i]) if steps is not None else i
            found.append((step, f"state_dict[{i}]", sd, None))
    found.sort(key=lambda f: f[0])
    st = [f[0] for f in found]
    huge = [f[1] for f in found if not 0 <= f[0] <= MAX_STEP]
    if huge:
        raise ConfigError(
            f"--checkpoints: {huge[0]}: step {st[[f[1] for f in found].index(huge[0])]} is not "
            f"between 0 and {MAX_STEP} (2**63 - 1); name checkpoints by their training step"
        )
    dup = sorted({s for s in st if st.count(s) > 1})
    if dup:
        raise ConfigError(f"--checkpoints: several checkpoints have step {dup[:5]}")
    paths = [f[3] for f in found]
    return (
        st,
        [f[1] for f in found],
        [f[2] for f in found],
        (paths if all(p is not None for p in paths) else None),
    )


def tensor_digest(h: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Feed names, dtypes, shapes and bytes of ``tensors`` (sorted by name) into hash ``h``."""
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def callable_identity(fn: Callable) -> str:
    """Source text where available, else the qualified name: changes when the function does."""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"

"""Validated configuration: one pydantic model per stage, every default written out.

A run's identity is the hash of the fields that change its training result (task, model, train);
sampler settings are hashed separately so new LLC settings reuse the trained checkpoints.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from grokbasin import restrictions, sampler_registry
from grokbasin.errors import ConfigError


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % k for k in range(2, math.isqrt(n) + 1))


def _show(v: Any) -> str:
    """A value as the user wrote it (YAML spelling for booleans, ISO for dates)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.date | dt.time):
        return f"the date {v.isoformat()}"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _numeric(kind: str) -> BeforeValidator:
    """Refuse values pydantic would otherwise coerce into a number: booleans and dates."""

    def check(v: Any) -> Any:
        if isinstance(v, bool | dt.date | dt.time):
            raise ValueError(f"must be {kind}, got {_show(v)}")
        return v

    return BeforeValidator(check)


Int = Annotated[int, _numeric("an integer")]
Float = Annotated[float, _numeric("a finite number")]


class _Strict(BaseModel):
    """No unknown fields, no NaN or infinity in any float, validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TaskConfig(_Strict):
    """Modular arithmetic c = a ∘ b mod p, split into train/validation by ``frac``."""

    name: Literal["modular"] = "modular"
    p: Int = Field(23, description="prime modulus (>= 3)")
    op: Literal["add", "sub", "mul", "div"] = "add"
    frac: Float = Field(0.4, description="training fraction, in (0, 1)")
    data_seed: Int | None = Field(
        None, description="seed of the train/val split; None: each replica uses its own seed"
    )

    @field_validator("p")
    @classmethod
    def _prime(cls, p: int) -> int:
        if p < 3 or not is_prime(p):
            raise ValueError(f"must be a prime >= 3, got {p}")
        return p

    @field_validator("frac")
    @classmethod
    def _frac(cls, f: float) -> float:
        if not 0.0 < f < 1.0:
            raise ValueError(f"must lie strictly between 0 and 1, got {f}")
        return f

    @property
    def n_pairs(self) -> int:
        return self.p * (self.p - 1) if self.op == "div" else self.p * self.p

    @property
    def n_train(self) -> int:
        return math.floor(self.frac * self.n_pairs)


def _check_heads(m: ModelConfig) -> ModelConfig:
    if m.name == "transformer" and m.embed_dim % m.heads:
        raise ValueError(f"embed_dim={m.embed_dim} must be divisible by heads={m.heads}")
    return m


class ModelConfig(_Strict):
    """Network architecture; ``width`` is the hidden size K."""

    name: Literal["quadratic", "mlp", "transformer"] = "quadratic"
    width: Int = Field(256, ge=1, description="hidden units K (quadratic, mlp)")
    embed_dim: Int = Field(128, ge=1, description="embedding size (mlp), d_model (transformer)")
    layers: Int = Field(2, ge=1, description="encoder layers (transformer)")
    heads: Int = Field(1, ge=1, description="attention heads (transformer)")
    ff: Int = Field(256, ge=1, description="feed-forward width (transformer)")
    positional: bool = Field(False, description="learned position embedding (transformer)")
    activation: Literal["relu", "gelu"] = "relu"
    init_scale: Float = Field(1.0, gt=0, description="multiplier on the PyTorch-default init")

    _heads = model_validator(mode="after")(_check_heads)


class TrainConfig(_Strict):
    """Optimisation; list-valued seeds/lr/weight_decay train every combination as replicas."""

    loss: Literal["centred_mse", "cross_entropy"] = "centred_mse"
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: list[Float] = Field(default_factory=lambda: [1e-3])
    weight_decay: list[Float] = Field(default_factory=lambda: [1e-4])
    momentum: Float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    betas: tuple[Float, Float] = (0.9, 0.999)
    eps: Float = Field(1e-8, gt=0, description="Adam epsilon")
    batch_size: Int = Field(128, ge=0, description="minibatch size; 0 means full batch")
    unit: Literal["pass", "step"] = Field(
        "pass",
        description="what `epochs` counts: a full pass over the shuffled training set, or one "
        "optimiser step on a fresh random batch (paper A's authors' 'epoch')",
    )
    epochs: Int = Field(2500, ge=1, description="training length, in units")
    checkpoint_every: Int = Field(100, ge=1, description="units between checkpoints")
    seeds: list[Int] = Field(default_factory=lambda: [0])
    early_stop: bool = False
    early_stop_patience: Int = Field(10, ge=1)
    early_stop_val_acc: Float = Field(0.99, ge=0, le=1)

    @field_validator("lr", "weight_decay", "seeds", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s for s in v.replace(",", " ").split() if s]
        return v if isinstance(v, list | tuple) else [v]

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: list[float]) -> list[float]:
        if not v or any(not x > 0 for x in v):
            raise ValueError(f"every learning rate must be > 0, got {v}")
        return v

    @field_validator("weight_decay")
    @classmethod
    def _wd(cls, v: list[float]) -> list[float]:
        if not v or any(x < 0 for x in v):
            raise ValueError(f"every weight decay must be >= 0, got {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list of distinct integers, got {v}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if any(not 0 <= x < 1 for x in v):
            raise ValueError(f"both Adam betas must lie in [0, 1), got {list(v)}")
        return v

    def checkpoint_epochs(self) -> tuple[int, ...] | None:
        """Epochs training saves (0, every multiple of checkpoint_every, the last); None if huge."""
        if self.epochs // self.checkpoint_every > 100_000:
            return None
        every = range(self.checkpoint_every, self.epochs + 1, self.checkpoint_every)
        return tuple(sorted({0, *every, self.epochs}))

    def saves_epoch(self, e: int) -> bool:
        every = self.checkpoint_every
        return e == 0 or e == self.epochs or (0 < e < self.epochs and e % every == 0)

    def replicas(self) -> list[dict[str, float | int]]:
        """Every (seed, lr, weight_decay) combination, in replica order."""
        return [
            {"seed": s, "lr": lr, "weight_decay": wd}
            for s, lr, wd in itertools.product(self.seeds, self.lr, self.weight_decay)
        ]


DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps|auto")
NOISE_STREAM = "splitmix64-polynomial-boxmuller"  # bump when the SGLD noise stream changes


RECORD_FIELDS = ("record_norms", "mala")
"""LLCConfig switches that record more (norms, MALA acceptance): hashed only when on."""


class LLCConfig(_Strict):
    """SGLD sampler and estimator settings (SPEC §3.3)."""

    chains: Int = Field(4, ge=1, description="chains per checkpoint")
    burnin: Int = Field(200, ge=0, description="burn-in steps")
    draws: Int = Field(400, ge=1, description="draws kept after burn-in")
    thin: Int = Field(1, ge=1, description="keep every thin-th draw")
    step_size: Float = Field(1e-4, gt=0, description="SGLD step size epsilon")
    gamma: Float = Field(5.0, ge=0, description="localisation strength")
    nbeta: Float | Literal["auto", "n_over_log_n"] = Field(
        "auto", description="n*beta; 'auto' = B/ln B (devinterp), 'n_over_log_n' = n/ln n"
    )
    nbetas: list[Float] = Field(
        default_factory=list, description="extra n*beta values for the temperature sweep"
    )
    weight_decay: Float = Field(0.0, ge=0)
    noise_level: Float = Field(1.0, ge=0)
    batch_size: Int = Field(128, ge=1, description="SGLD minibatch size")
    seed: Int = 0
    baseline: Literal["full", "devinterp"] = Field(
        "full", description="L_n(w*): full training loss, or devinterp's first-batch loss"
    )
    checkpoints: str = Field("all", description="'all', 'last' or comma-separated epochs")
    method: str = Field("sgld", description=f"sampler: {' | '.join(sampler_registry.METHODS)}")
    options: dict[str, Float] = Field(
        default_factory=dict,
        description=f"the sampler's own hyperparameters ({sampler_registry.options_help()}); "
        "unset ones take their defaults",
    )
    record_norms: bool = Field(
        False,
        description="store gradient, noise and distance-from-w* norm traces for the report's "
        "sampler dashboard (runs the reference kernel: slower)",
    )
    mala: bool = Field(False, description="record MALA acceptance (plain sgld only)")

    restrict: dict[str, list[str]] = Field(
        default_factory=dict,
        description="weight-restricted LLCs, NAME -> parameter-name globs (PATTERN#head=H: one "
        "attention head); each has its own rows, sampled in one call with the unrestricted λ̂",
    )

    data: str = Field(
        "train",
        description="data-refined LLC: the subset whose loss the posterior uses "
        "(train | val | all | class=K); 'train' is the plain LLC",
    )

    @model_validator(mode="after")
    def _mala_needs_sgld(self) -> LLCConfig:
        if self.mala and self.method != "sgld":  # MALA scores SGLD's own move
            raise ValueError(f"mala: MALA acceptance needs method sgld, not {self.method!r}")
        return self

    @field_validator("restrict", mode="before")
    @classmethod
    def _restrict(cls, v: Any) -> Any:
        return restrictions.check(v if v is not None else {})

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dumps without ``restrict`` when it is empty: config files and stored sampler settings
        of unrestricted estimates stay as they were before the field existed."""
        data = handler(self)
        if not self.restrict:
            data.pop("restrict", None)
        return data

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        from grokbasin.subset_names import check_subset

        return check_subset(v)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        sampler_registry.spec(v)
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        method = info.data.get("method")
        if method is not None:  # else the method's own error is the one to report
            sampler_registry.resolve(method, v)
        return v

    def sampler_options(self) -> dict[str, float]:
        """Every option of the sampler, the given ones over the defaults."""
        return sampler_registry.resolve(self.method, self.options)

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _checkpoints(cls, v: Any) -> Any:
        """'all', 'last' or epochs (a number, a list, or 'E1,E2'), normalised to 'E1,E2'."""
        if isinstance(v, bool):
            raise ValueError(f"must be 'all', 'last' or checkpoint epochs, got {_show(v)}")
        if isinstance(v, int):
            v = [v]
        if isinstance(v, list | tuple):
            if any(isinstance(x, bool) or not isinstance(x, int) for x in v):
                raise ValueError(f"must be 'all', 'last' or checkpoint epochs, got {v!r}")
            v = ",".join(str(x) for x in v)
        if not isinstance(v, str):
            return v  # pydantic reports the type
        text = v.strip()
        if text in ("all", "last"):
            return text
        parts = [x for x in re.split(r"[,\s]+", text) if x]
        if not parts or any(not x.isdigit() for x in parts):
            raise ValueError(f"must be 'all', 'last' or comma-separated epochs >= 0, got {v!r}")
        return ",".join(str(e) for e in sorted({int(x) for x in parts}))

    def epochs_wanted(self) -> list[int] | None:
        """The explicit epochs of ``checkpoints``; None for 'all' or 'last'."""
        if self.checkpoints in ("all", "last"):
            return None
        return [int(x) for x in self.checkpoints.split(",")]

    @field_validator("nbeta", mode="before")
    @classmethod
    def _nbeta(cls, v: Any) -> Any:
        if v in ("auto", "n_over_log_n") and isinstance(v, str):
            return v
        bad = ValueError(f"must be a finite number > 0, 'auto' or 'n_over_log_n', got {_show(v)}")
        if isinstance(v, bool | dt.date | dt.time):
            raise bad
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise bad from None
        if not (math.isfinite(x) and x > 0):
            raise bad
        return x

    @field_validator("nbetas", mode="before")
    @classmethod
    def _nbetas(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s for s in v.replace(",", " ").split() if s]
        if isinstance(v, list | tuple):
            for x in v:
                if isinstance(x, int | float) and not isinstance(x, bool) and not x > 0:
                    raise ValueError(f"every n*beta must be > 0, got {v}")
        return v

    @field_validator("nbetas")
    @classmethod
    def _nbetas_positive(cls, v: list[float]) -> list[float]:
        if any(not x > 0 for x in v):
            raise ValueError(f"every n*beta must be > 0, got {v}")
        return v

    def resolve_nbeta(self, n_train: int) -> float:
        """The numeric n*beta for a training set of ``n_train`` samples."""
        if self.nbeta == "auto":
            b = min(self.batch_size, n_train)
            return b / math.log(b)
        if self.nbeta == "n_over_log_n":
            return n_train / math.log(n_train)
        return float(self.nbeta)

    def sampler_hash(self) -> str:
        """Short hash of every setting that changes an estimate (not which checkpoints), the
        sampler's options included where they differ from their defaults.

        The noise-stream tag keeps estimates drawn with an older random stream from mixing with
        new ones under the same settings.
        """
        data = self.model_dump(
            exclude={"checkpoints", "options", "data", "restrict", *RECORD_FIELDS}
        )
        for k in RECORD_FIELDS:  # absent when off: hashes made before they existed stay valid
            if getattr(self, k):
                data[k] = True
        options = sampler_registry.non_default(self.method, self.options)
        if options:  # absent when every option is at its default: older hashes stay valid
            data["options"] = options
        if self.data != "train":  # the data-refined LLC; the plain LLC keeps its older hashes
            data["data"] = self.data
        return short_hash({**data, "noise": NOISE_STREAM})

    def restriction_hash(self, name: str) -> str:
        """The rows' identity of restriction ``name``: the sampler hash with the restriction's
        name and patterns, so each restriction caches and resumes on its own."""
        return short_hash(
            {"sampler": self.sampler_hash(), "restriction": name, "patterns": self.restrict[name]}
        )

    def variants(self) -> list[tuple[str | None, str]]:
        """(restriction name, row hash) of every estimate this config makes: the unrestricted
        one (name None, :meth:`sampler_hash`) first, then each restriction in order."""
        return [(None, self.sampler_hash())] + [
            (k, self.restriction_hash(k)) for k in self.restrict
        ]


class RunConfig(_Strict):
    """Everything one `grokbasin run` needs."""

    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    llc: LLCConfig = Field(default_factory=LLCConfig)
    device: str = Field(
        "cpu", description="cpu | cuda | cuda:N | mps | auto (CUDA if present, else CPU)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_PATTERN.fullmatch(v):
            raise ValueError(f"got {v!r}; use cpu, cuda, cuda:N, mps or auto")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        wanted = self.llc.epochs_wanted() or []
        bad = [e for e in wanted if not self.train.saves_epoch(e)]
        if bad:
            t = self.train
            raise ValueError(
                f"llc.checkpoints: epoch {bad[0]} is not a checkpoint epoch: training saves epoch "
                f"0, every multiple of train.checkpoint_every={t.checkpoint_every} and the last, "
                f"train.epochs={t.epochs}"
            )
        n = self.task.n_train
        if n < 2:
            raise ValueError(f"task.frac={self.task.frac} leaves {n} training samples; need >= 2")
        if (
            self.model.name == "transformer"
            and self.task.op in ("sub", "div")
            and not self.model.positional
        ):
            raise ValueError(
                f"model.positional: a transformer without position embedding is symmetric in "
                f"(a, b) and cannot fit task.op={self.task.op!r}; set model.positional: true"
            )
        if self.train.batch_size > n:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} exceeds the {n} training samples "
                f"(p={self.task.p}, frac={self.task.frac}); use a batch <= {n}, or 0 for full batch"
            )
        return self

    def run_hash(self) -> str:
        """Identity of the trained run: everything that changes training, nothing else.

        ``train.unit`` enters only when it is not the default, so runs made before the field
        existed keep their hash (and their directory).
        """
        data = self.model_dump(include={"task", "model", "train"})
        if data["train"]["unit"] == "pass":
            del data["train"]["unit"]
        return short_hash(data)


def short_hash(obj: Any, n: int = 10) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: 'field.path: message'."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if "[" not in str(x))  # no union-member tags
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg.lower()}"
        elif e["type"] in _BOUNDS:
            op, key = _BOUNDS[e["type"]]
            msg = f"must be {op} {e['ctx'][key]}, got {_show(e.get('input'))}"
        elif e["type"] == "finite_number":
            msg = f"must be a finite number, got {_show(e.get('input'))}"
        elif "input" in e and e["type"] not in ("missing", "value_error", "assertion_error"):
            msg = f"{msg[:1].lower()}{msg[1:]}, got {_show(e['input'])}"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def build_config(
    base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Validate ``base`` (nested dict, e.g. from YAML) with dotted-key ``overrides`` applied."""
    data: dict[str, Any] = copy.deepcopy(base or {})
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: cannot set inside a non-mapping value")
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (not last-one-wins)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: SafeLoader reports it
            continue
        if dup:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file; any problem (duplicate keys, an empty file) is a one-line ConfigError."""
    p = Path(path)
    try:
        data = safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: unreadable ({e.__class__.__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        what = f" ({e.problem})" if getattr(e, "problem", None) else ""
        raise ConfigError(f"config file {p}: invalid YAML{where}{what}") from None
    if data is None:
        raise ConfigError(
            f"config file {p}: empty; write the settings into it, or leave out the file to use "
            "the defaults"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping of sections")
    return data


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

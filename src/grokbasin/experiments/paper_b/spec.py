"""Paper B's run kind: one replica's identity (task, model, training) and its sampler settings.

A :class:`BRun` is stored like a paper-A run: ``<root>/<hash>/config.yaml`` with sections
``task``, ``model``, ``train`` (the hashed identity), ``llc`` (the sampler, hashed separately, so
new sampler settings reuse trained checkpoints) and ``kind: paper-b``. Field names and types match
paper A's where they mean the same thing (``task.p``, ``model.width``, ``train.lr`` as a list,
``train.seeds``), so ``grokbasin runs --sql`` lists both kinds in one ``runs`` view.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from grokbasin.config import NOISE_STREAM, format_validation_error, short_hash
from grokbasin.errors import ConfigError

Family = Literal["polynomial", "low_rank", "autoencoder", "tms", "grokking_mlp"]
FAMILIES: tuple[str, ...] = ("polynomial", "low_rank", "autoencoder", "tms", "grokking_mlp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BTask(_Strict):
    """The data set of one replica (which fields apply depends on the family)."""

    name: Family
    n: int | None = Field(None, ge=2, description="samples (regression families, TMS)")
    c: float | None = Field(None, gt=0, description="polynomial domain [-c, c]")
    true_degree: int | None = Field(None, ge=0, description="degree of the polynomial truth")
    noise: float | None = Field(None, ge=0, description="label noise std")
    d: int | None = Field(None, ge=1, description="input dimension (low-rank, autoencoder)")
    features: int | None = Field(None, ge=1, description="TMS features")
    p: int | None = Field(None, ge=3, description="modulus (grokking MLP, addition mod p)")
    frac: float | None = Field(None, gt=0, lt=1, description="training fraction (grokking MLP)")


class BModel(_Strict):
    """The network; ``size`` is the dimension replicas may differ in within one batch."""

    name: Family
    size: int = Field(ge=1, description="degree | rank | bottleneck | TMS hidden | MLP hidden")
    width: int | None = Field(None, ge=1, description="autoencoder hidden width")
    embed_dim: int | None = Field(None, ge=1, description="grokking MLP embedding size")


class BTrain(_Strict):
    """Optimisation of one replica; ``steps = 0`` means the exact minimum (closed form)."""

    steps: int = Field(0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: list[float] = Field(default_factory=lambda: [1e-3])
    weight_decay: list[float] = Field(default_factory=lambda: [0.0])
    momentum: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(0, ge=0, description="0: full batch")
    seeds: list[int] = Field(default_factory=lambda: [0])
    checkpoint_every: int = Field(
        0, ge=0, description="steps between checkpoints (metrics are logged at each); 0: last only"
    )

    @field_validator("lr", "weight_decay", "seeds", mode="before")
    @classmethod
    def _one(cls, v: Any) -> Any:
        v = v if isinstance(v, list | tuple) else [v]
        if len(v) != 1:
            raise ValueError(f"one value per run (replicas are separate runs), got {v}")
        return list(v)

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: list[float]) -> list[float]:
        if not all(0 < x < float("inf") for x in v):
            raise ValueError(f"must be finite and > 0, got {v}")
        return v


class BSampler(_Strict):
    """SGLD settings of one estimate (paper B's ε, γ, steps; nβ numeric)."""

    step_size: float = Field(gt=0)
    gamma: float = Field(ge=0)
    nbeta: float = Field(gt=0)
    burnin: int = Field(ge=0)
    draws: int = Field(ge=1)
    chains: int = Field(2, ge=1)
    batch_size: int = Field(0, ge=0, description="SGLD minibatch; 0: full batch")
    seed: int = 0
    checkpoints: Literal["last", "all", "grokking"] = Field(
        "last", description="which checkpoints: last, all, or (i, j) of a grokking run"
    )

    def sampler_hash(self) -> str:
        """Hash of every setting that changes an estimate (not which checkpoints)."""
        return short_hash({**self.model_dump(exclude={"checkpoints"}), "noise": NOISE_STREAM})


class BRun(_Strict):
    """One paper-B run: a single replica (one seed, one size) and its sampler settings."""

    kind: Literal["paper-b"] = "paper-b"
    task: BTask
    model: BModel
    train: BTrain = Field(default_factory=BTrain)
    llc: BSampler
    device: str = "cpu"

    @property
    def family(self) -> str:
        return self.task.name

    @property
    def seed(self) -> int:
        return self.train.seeds[0]

    def run_hash(self) -> str:
        """Identity of the trained run: everything that changes training, nothing else."""
        return short_hash(self.model_dump(include={"kind", "task", "model", "train"}))


def build_run(data: dict[str, Any]) -> BRun:
    """Validate a nested dict as a BRun; problems become one ConfigError line."""
    try:
        run = BRun.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    if run.task.name != run.model.name:
        raise ConfigError(f"model.name: must equal task.name ({run.task.name!r})")
    return run


def dump_yaml(run: BRun) -> str:
    return yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False)


def expand_grid(grid: dict[str, Any]) -> list[BRun]:
    """Runs of a grid given as data: ``base`` (nested), ``points`` (dotted overrides), ``seeds``.

    ``{"base": {...}, "points": [{"model.size": 3, "task.c": 0.5}, ...], "seeds": [0, 1]}``
    gives one run per (point, seed), in that order.
    """
    out = []
    for point in grid.get("points") or [{}]:
        for seed in grid.get("seeds") or [0]:
            data = json.loads(json.dumps(grid["base"]))
            for dotted, value in {**point, "train.seeds": [seed]}.items():
                node = data
                *parents, leaf = dotted.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = value
            out.append(build_run(data))
    return out


__all__ = ["BModel", "BRun", "BSampler", "BTask", "BTrain", "FAMILIES", "build_run", "expand_grid"]

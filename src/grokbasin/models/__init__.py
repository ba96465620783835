"""Pure functional models: a parameter dict whose tensors carry a leading replica axis R.

``build_model(cfg, n_tokens, n_outputs)`` returns a :class:`Model` with ``init(keys) -> params``
and ``forward(params, x) -> [R, n, outputs]``, where ``x`` holds operand tokens, either shared by
all replicas ([n, 2]) or per replica ([R, n, 2]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from grokbasin.config import ModelConfig
from grokbasin.models import mlp, quadratic, transformer
from grokbasin.types import Params


@dataclass(frozen=True)
class Model:
    name: str
    init: Callable[[torch.Tensor], Params]
    forward: Callable[[Params, torch.Tensor], torch.Tensor]


def build_model(cfg: ModelConfig, n_tokens: int, n_outputs: int) -> Model:
    if cfg.name == "quadratic":
        return Model(
            "quadratic",
            lambda keys: quadratic.init(keys, n_tokens, n_outputs, cfg.width, cfg.init_scale),
            quadratic.forward,
        )
    if cfg.name == "mlp":
        act = {"relu": torch.relu, "gelu": torch.nn.functional.gelu}[cfg.activation]
        return Model(
            "mlp",
            lambda keys: mlp.init(
                keys, n_tokens, n_outputs, cfg.embed_dim, cfg.width, cfg.init_scale
            ),
            lambda params, x: mlp.forward(params, x, act),
        )
    if cfg.name == "transformer":
        return Model(
            "transformer",
            lambda keys: transformer.init(
                keys,
                n_tokens,
                n_outputs,
                cfg.embed_dim,
                cfg.layers,
                cfg.heads,
                cfg.ff,
                cfg.init_scale,
            ),
            lambda params, x: transformer.forward(params, x, cfg.heads),
        )
    raise ValueError(f"unknown model {cfg.name!r}")


def n_params(params: Params) -> int:
    """Parameters per replica."""
    return sum(t[0].numel() for t in params.values())


__all__ = ["Model", "Params", "build_model", "n_params"]

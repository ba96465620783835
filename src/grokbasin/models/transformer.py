"""Paper A's small transformer (App. H.3.1) as pure functions with a leading replica axis R.

Tokens a, b share one embedding E [R, p, D]; ``layers`` post-norm encoder layers (the
``nn.TransformerEncoderLayer`` defaults: norm_first=False, LayerNorm eps 1e-5, exact GELU, no
dropout) act on the 2-token sequence; the outputs are mean-pooled over the two positions and read
out linearly to p logits. Weights are stored [in, out] so every matmul is one batched ``bmm``.

Positional information: the paper names none, and with none the network is exactly symmetric in
(a, b) (self-attention is permutation-equivariant and the mean-pool invariant). That is the right
inductive bias for a + b and a·b, so the default has no positional embedding; ``positional=True``
adds a learned P [R, 2, D] (N(0, 1) like ``nn.Embedding``) for the non-commutative a − b and a / b.

Inits are PyTorch's defaults, drawn from grokbasin.rng: E ~ N(0, 1); the attention in-projection
Xavier-uniform with zero bias and the out-projection ``nn.Linear``-uniform with zero bias (what
``nn.MultiheadAttention._reset_parameters`` does); feed-forward and readout ``nn.Linear`` uniform
U(±1/sqrt(fan_in)) for weight and bias; LayerNorm weight 1, bias 0. ``scale`` multiplies every
random draw (LayerNorm parameters are left at 1 / 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from grokbasin import rng
from grokbasin.models.common import linear_init, rows
from grokbasin.types import Params

_LN_EPS = 1e-5


def _xavier(keys: torch.Tensor, tag: int, fan_in: int, fan_out: int, scale: float) -> torch.Tensor:
    """Xavier-uniform [R, fan_in, fan_out] (``nn.init.xavier_uniform_``), times ``scale``."""
    bound = scale * math.sqrt(6.0 / (fan_in + fan_out))
    return (2.0 * rng.uniform(rng.fold_in(keys, tag), (fan_in, fan_out)) - 1.0) * bound


def init(
    keys: torch.Tensor,
    n_tokens: int,
    n_outputs: int,
    d_model: int = 256,
    layers: int = 2,
    heads: int = 1,
    ff: int = 256,
    scale: float = 1.0,
    positional: bool = False,
) -> Params:
    """Parameters [R, ...] with PyTorch-default inits; per-layer names are prefixed ``L<i>.``."""
    if d_model % heads:
        raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
    R, D = keys.shape[0], d_model
    dev = keys.device
    params: Params = {"E": rng.normal(rng.fold_in(keys, 60), (n_tokens, D)) * scale}
    if positional:
        params["P"] = rng.normal(rng.fold_in(keys, 61), (2, D)) * scale
    for i in range(layers):
        t = 100 + 10 * i
        params |= {
            f"L{i}.Wqkv": _xavier(keys, t, D, 3 * D, scale),
            f"L{i}.bqkv": torch.zeros(R, 3 * D, device=dev),
            f"L{i}.Wo": linear_init(keys, t + 1, (D, D), fan_in=D, scale=scale),
            f"L{i}.bo": torch.zeros(R, D, device=dev),
            f"L{i}.ln1_w": torch.ones(R, D, device=dev),
            f"L{i}.ln1_b": torch.zeros(R, D, device=dev),
            f"L{i}.W1": linear_init(keys, t + 2, (D, ff), fan_in=D, scale=scale),
            f"L{i}.b1": linear_init(keys, t + 3, (ff,), fan_in=D, scale=scale),
            f"L{i}.W2": linear_init(keys, t + 4, (ff, D), fan_in=ff, scale=scale),
            f"L{i}.b2": linear_init(keys, t + 5, (D,), fan_in=ff, scale=scale),
            f"L{i}.ln2_w": torch.ones(R, D, device=dev),
            f"L{i}.ln2_b": torch.zeros(R, D, device=dev),
        }
    params["Wout"] = linear_init(keys, 98, (D, n_outputs), fan_in=D, scale=scale)
    params["bout"] = linear_init(keys, 99, (n_outputs,), fan_in=D, scale=scale)
    return params


def n_layers(params: Params) -> int:
    """Encoder layers present in a parameter dict."""
    return sum(1 for k in params if k.endswith(".Wqkv"))


def _linear(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h [R, m, in] @ W [R, in, out] + b [R, out] as one batched matmul."""
    return torch.baddbmm(b[:, None, :], h, W)


def _layer_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis with per-replica affine w, b [R, D]."""
    h = F.layer_norm(h, h.shape[-1:], eps=_LN_EPS)
    return h * w[:, None, :] + b[:, None, :]


def attention(params: Params, i: int, h: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention of layer i within each sample's 2 tokens: h [R, n, 2, D] -> same shape."""
    R, n, T, D = h.shape
    dh = D // heads
    qkv = _linear(h.reshape(R, n * T, D), params[f"L{i}.Wqkv"], params[f"L{i}.bqkv"])
    q, k, v = qkv.reshape(R, n, T, 3, heads, dh).unbind(3)  # each [R, n, T, H, dh]
    scores = torch.einsum("rnihd,rnjhd->rnhij", q, k) / math.sqrt(dh)
    out = torch.einsum("rnhij,rnjhd->rnihd", scores.softmax(-1), v).reshape(R, n * T, D)
    return _linear(out, params[f"L{i}.Wo"], params[f"L{i}.bo"]).reshape(R, n, T, D)


def encoder_layer(params: Params, i: int, h: torch.Tensor, heads: int) -> torch.Tensor:
    """Post-norm layer: h = LN1(h + SA(h)); h = LN2(h + W2·GELU(W1·h)). h [R, n, 2, D]."""
    R, n, T, D = h.shape
    flat = h.reshape(R, n * T, D)
    flat = _layer_norm(
        flat + attention(params, i, h, heads).reshape(R, n * T, D),
        params[f"L{i}.ln1_w"],
        params[f"L{i}.ln1_b"],
    )
    ff = _linear(
        F.gelu(_linear(flat, params[f"L{i}.W1"], params[f"L{i}.b1"])),
        params[f"L{i}.W2"],
        params[f"L{i}.b2"],
    )
    flat = _layer_norm(flat + ff, params[f"L{i}.ln2_w"], params[f"L{i}.ln2_b"])
    return flat.reshape(R, n, T, D)


def embed(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Token (+ optional positional) embeddings of x [n, 2] or [R, n, 2]: [R, n, 2, D]."""
    E = params["E"]
    h = torch.stack([rows(E, x[..., 0]), rows(E, x[..., 1])], dim=2)
    if "P" in params:
        h = h + params["P"][:, None, :, :]
    return h


def forward(params: Params, x: torch.Tensor, heads: int = 1) -> torch.Tensor:
    """Logits [R, n, p] for operand tokens x [n, 2] (shared) or [R, n, 2] (per replica)."""
    h = embed(params, x)
    for i in range(n_layers(params)):
        h = encoder_layer(params, i, h, heads)
    pooled = h.mean(dim=2)  # [R, n, D]
    return _linear(pooled, params["Wout"], params["bout"])

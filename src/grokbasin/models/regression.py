"""Paper B's scaling families as pure functions with a replica axis (SPEC §3.8).

Polynomial regressor f(x) = Σ_i a_i x^i, low-rank linear network f(x) = W₂W₁x and the ReLU
autoencoder d → 128 → r → 128 → d. Replicas of different size (degree, rank, bottleneck) share
one batch by padding to the largest size with a 0/1 ``mask`` [R, size]: masked coordinates do not
touch the output, so they get no loss gradient and add nothing to an LLC estimate.
"""

from __future__ import annotations

import torch

from grokbasin import rng
from grokbasin.models.common import linear_init
from grokbasin.types import Params


def size_mask(
    sizes: list[int] | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """[R, max size] 0/1 float mask keeping the first sizes[r] units of replica r."""
    s = torch.as_tensor(sizes, dtype=torch.int64, device=device).reshape(-1)
    return (torch.arange(int(s.max()), device=s.device)[None, :] < s[:, None]).to(torch.float32)


def poly_init(keys: torch.Tensor, degree: int, scale: float = 0.0) -> Params:
    """Coefficients a [R, degree+1]: zeros (scale 0) or N(0, scale²)."""
    return {"a": rng.normal(rng.fold_in(keys, 31), (degree + 1,)) * scale}


def poly_features(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Monomials x^0..x^degree of x [..., N, 1] -> [..., N, degree+1]."""
    return x ** torch.arange(degree + 1, dtype=x.dtype, device=x.device)


def poly_forward(params: Params, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """f(x) = Σ_i a_i x^i, x [N, 1] or [R, N, 1] -> [R, N, 1]; mask [R, D+1] drops terms."""
    a = params["a"] if mask is None else params["a"] * mask
    feats = poly_features(x, a.shape[1] - 1)
    return torch.matmul(feats, a[..., None]) if feats.dim() == 3 else (feats @ a.T).T[..., None]


def poly_forward_features(
    params: Params, feats: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """f from precomputed monomials feats [R, N, D+1] -> [R, N, 1] (no powers on the hot path)."""
    a = params["a"] if mask is None else params["a"] * mask
    return torch.matmul(feats, a[..., None])


def poly_lstsq(
    x: torch.Tensor, y: torch.Tensor, degree: int, mask: torch.Tensor | None = None
) -> Params:
    """Exact least-squares coefficients per replica (float64 solve), masked ones held at zero."""
    R = y.shape[0]
    feats = poly_features(x.to(torch.float64), degree).expand(R, -1, -1)
    if mask is not None:
        feats = feats * mask.to(torch.float64)[:, None, :]
    sol = torch.linalg.lstsq(
        feats, y.to(torch.float64), driver="gelsd" if feats.device.type == "cpu" else None
    )
    return {"a": sol.solution[..., 0].to(y.dtype)}


def lowrank_init(
    keys: torch.Tensor, d_in: int, d_out: int, rank: int, scale: float = 1.0
) -> Params:
    """W1 [R, rank, d_in], W2 [R, d_out, rank] with the ``nn.Linear`` default init."""
    return {
        "W1": linear_init(keys, 41, (rank, d_in), fan_in=d_in, scale=scale),
        "W2": linear_init(keys, 42, (d_out, rank), fan_in=rank, scale=scale),
    }


def lowrank_forward(
    params: Params, x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """f(x) = W₂ diag(mask) W₁ x for x [N, d] or [R, N, d] -> [R, N, d_out]."""
    h = torch.matmul(x, params["W1"].transpose(1, 2))
    if mask is not None:
        h = h * mask[:, None, :]
    return torch.matmul(h, params["W2"].transpose(1, 2))


def lowrank_from_matrix(M: torch.Tensor, rank: int) -> Params:
    """A minimum of ‖W₂W₁ − M‖: the balanced rank-``rank`` truncated SVD of M [R, d_out, d_in]."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    s = S[:, :rank].sqrt()
    return {"W1": s[..., None] * Vh[:, :rank], "W2": U[:, :, :rank] * s[:, None, :]}


def autoencoder_init(keys: torch.Tensor, d: int, bottleneck: int, width: int = 128) -> Params:
    """ReLU MLP d → width → bottleneck → width → d; ``nn.Linear`` init, weights [in, out]."""
    dims = [d, width, bottleneck, width, d]
    params: Params = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        params[f"W{i + 1}"] = linear_init(keys, 50 + 2 * i, (a, b), fan_in=a, scale=1.0)
        params[f"b{i + 1}"] = linear_init(keys, 51 + 2 * i, (b,), fan_in=a, scale=1.0)
    return params


def autoencoder_forward(
    params: Params, x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ReLU after each width-128 layer; linear bottleneck (masked to r units) and output."""
    h = torch.relu(torch.matmul(x, params["W1"]) + params["b1"][:, None, :])
    z = torch.matmul(h, params["W2"]) + params["b2"][:, None, :]
    if mask is not None:
        z = z * mask[:, None, :]
    h = torch.relu(torch.matmul(z, params["W3"]) + params["b3"][:, None, :])
    return torch.matmul(h, params["W4"]) + params["b4"][:, None, :]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per replica over samples and outputs (``nn.MSELoss``): [R]."""
    return (pred - target).square().mean(dim=(1, 2))


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Elhage et al.'s importance-weighted squared error, summed over outputs, mean over samples."""
    return ((pred - target).square() * weights).sum(-1).mean(-1)


__all__ = [
    "autoencoder_forward",
    "autoencoder_init",
    "lowrank_forward",
    "lowrank_from_matrix",
    "lowrank_init",
    "mse",
    "poly_features",
    "poly_forward",
    "poly_forward_features",
    "poly_init",
    "poly_lstsq",
    "size_mask",
    "weighted_mse",
]

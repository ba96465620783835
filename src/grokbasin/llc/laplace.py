"""The localised Laplace prediction of the LLC, a deterministic companion to SGLD (SPEC §3.3).

Near a minimally singular w* the localised tempered posterior exp(−nβ L_n(w) − γ/2 ‖w − w*‖²)
is Gaussian with precision nβ·H + γ·I, and nβ·(E L_n − L_n(w*)) = ½ tr(nβH (nβH + γ)⁻¹), so

    λ_Lap(nβ, γ) = ½ Σ_i nβ μ_i / (nβ μ_i + γ),

μ_i the eigenvalues of the Gauss–Newton Hessian of the centred MSE training loss
L = (1/(2N))‖P⊥(Y − Ŷ)‖²_F, which is exactly H = (1/N)·J_cᵀJ_c (J_c = P⊥J, the output Jacobian
on the N training points centred over samples; P⊥ is idempotent so JᵀP⊥J = J_cᵀJ_c). Its nonzero
spectrum equals that of the (N·o)×(N·o) Gram matrix (1/N)·J_cJ_cᵀ; the smaller of the two Gram
matrices is diagonalised in float64. As nβ → ∞, γ → 0: λ_Lap → rank(J_c)/2.

Numerical rank: an eigenvalue counts when μ > μ_max · max(N·o, P) · rtol with rtol = float64
machine epsilon, the rounding floor of a float64 eigendecomposition. The Jacobian is evaluated in
float64 at the checkpoint's exact (float32-representable) values, so nothing coarser is noise: on
the SPEC reference run (p = 23, K = 256) the spectrum drops from 3e-7·μ_max to 2e-16·μ_max exactly
at p·(N−1) = 4830, whereas a float32-eps cut on singular values (as in ``theory.numeric``) lands
inside the smooth tail and reports ~4750. Eigenvalues under the cut are dropped before summing.

For models too large for an eigendecomposition, tr f(H) with f(μ) = nβμ/(nβμ + γ) is estimated
by stochastic Lanczos quadrature (SLQ) with Rademacher probes and matrix-free products
H v = (1/N)·J_cᵀ(J_c v) from torch.func ``jvp``/``vjp``; the probes ride the model's replica axis,
so all of them go through one batched forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.func import jvp, vjp

from grokbasin import rng
from grokbasin.errors import GrokbasinError
from grokbasin.theory.numeric import (
    generic_jacobian,
    onehot_inputs,
    quadratic_gram,
)
from grokbasin.types import Params

Forward = Callable[[Params, torch.Tensor], torch.Tensor]
_PROBE_TAG = 0x51A0
F64_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of the centred Gauss–Newton Hessian H = (1/N)·J_cᵀJ_c and their numeric rank."""

    eigenvalues: np.ndarray  # all computed eigenvalues, descending (the smaller Gram's size)
    tol: float  # eigenvalue threshold of the numerical rank
    shape: tuple[int, int]  # (N·o, P) of J_c

    @property
    def positive(self) -> np.ndarray:
        """Eigenvalues above the rank tolerance: the ones λ_Lap sums over."""
        return self.eigenvalues[self.eigenvalues > self.tol]

    @property
    def rank(self) -> int:
        return int(self.positive.size)


def spectrum_from_gram(
    gram: torch.Tensor, n: int, shape: tuple[int, int], rtol: float | None = None
) -> Spectrum:
    """Spectrum of H from a Gram matrix of J_c ([m, m], either J_cJ_cᵀ or J_cᵀJ_c) and N = n."""
    eig = torch.linalg.eigvalsh(gram.double()).flip(0).clamp_min(0).cpu().numpy() / n
    rtol = F64_EPS if rtol is None else rtol
    top = float(eig[0]) if eig.size else 0.0
    tol = top * max(shape) * rtol
    return Spectrum(eig, tol, shape)


def _strip(params: Params) -> Params:
    """One replica as a batch of one: every tensor [1, ...] in float64."""
    out = {}
    for k, v in params.items():
        if v.shape[0] != 1:
            raise ValueError(
                f"params[{k!r}] must hold one replica (leading axis 1), got {tuple(v.shape)}"
            )
        out[k] = v.detach().double()
    return out


def gauss_newton_spectrum(
    forward: Forward, params: Params, x_train: torch.Tensor, rtol: float | None = None
) -> Spectrum:
    """Exact spectrum of H for any replica-batched model (params [1, ...], x_train [N, ...])."""
    p1 = _strip(params)
    J = generic_jacobian(forward, p1, x_train)[0].double()  # [N, o, P]
    n, o, P = J.shape
    Jc = (J - J.mean(dim=0, keepdim=True)).reshape(n * o, P)
    gram = Jc @ Jc.T if n * o <= P else Jc.T @ Jc
    return spectrum_from_gram(gram, n, (n * o, P), rtol)


def quadratic_spectrum(
    params: Params, x_train: torch.Tensor, rtol: float | None = None
) -> Spectrum:
    """Exact spectrum of H for the quadratic net from its closed-form Gram matrix (no J formed)."""
    p1 = _strip(params)
    W, V = p1["W"], p1["V"]
    X = onehot_inputs(x_train, W.shape[1] // 2)
    n, o = X.shape[0], V.shape[1]
    gram = quadratic_gram(W, V, X, centred=True)[0]
    return spectrum_from_gram(gram, n, (n * o, W[0].numel() + V[0].numel()), rtol)


def laplace_llc(
    spectrum: Spectrum | np.ndarray, nbeta: np.ndarray | float, gamma: np.ndarray | float
) -> np.ndarray:
    """λ_Lap(nβ, γ) = ½ Σ_i nβμ_i/(nβμ_i + γ), broadcast over the shapes of nbeta and gamma."""
    mu = (
        spectrum.positive
        if isinstance(spectrum, Spectrum)
        else np.clip(np.asarray(spectrum, float), 0, None)
    )
    nb, g = np.broadcast_arrays(np.asarray(nbeta, float), np.asarray(gamma, float))
    a = nb[..., None] * mu
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(a > 0, a / (a + g[..., None]), 0.0)
    return 0.5 * frac.sum(axis=-1)


def laplace_limit(spectrum: Spectrum) -> float:
    """The nβ → ∞, γ → 0 limit rank(J_c)/2: the data-aware numeric LLC."""
    return spectrum.rank / 2.0


# ---------------------------------------------------------------- stochastic Lanczos quadrature


def gn_matvec(
    forward: Forward, params: Params, x_train: torch.Tensor
) -> Callable[[Params], Params]:
    """v ↦ H v = (1/N)·J_cᵀ(J_c v) on S stacked tangents (each tensor [S, ...]), matrix-free.

    The S tangents are S replicas of the same point, so one batched jvp and one vjp serve them
    all; the pullback is built once per S and reused at every step.
    """
    p1 = _strip(params)
    n = x_train.shape[0]
    cache: dict[int, tuple[Params, Callable]] = {}

    def f(q: Params) -> torch.Tensor:
        return forward(q, x_train)

    def mv(v: Params) -> Params:
        S = next(iter(v.values())).shape[0]
        if S not in cache:
            w = {k: t.expand(S, *t.shape[1:]).contiguous() for k, t in p1.items()}
            cache[S] = (w, vjp(f, w)[1])
        w, pull = cache[S]
        jv = jvp(f, (w,), (v,))[1]  # [S, N, o]
        (hv,) = pull(jv - jv.mean(dim=1, keepdim=True))
        return {k: t / n for k, t in hv.items()}

    return mv


def _flat(v: Params) -> torch.Tensor:
    return torch.cat([t.reshape(t.shape[0], -1) for t in v.values()], dim=1)


def _unflat(x: torch.Tensor, like: Params) -> Params:
    out, lo = {}, 0
    for k, t in like.items():
        size = t[0].numel()
        out[k] = x[:, lo : lo + size].reshape(x.shape[0], *t.shape[1:])
        lo += size
    return out


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lanczos, full reorthogonalisation, from v0 [S, P]: (alpha [S, m], beta [S, m-1])."""
    S, P = v0.shape
    m = min(steps, P)
    Q = torch.zeros(m, S, P, dtype=v0.dtype, device=v0.device)
    alpha = torch.zeros(S, m, dtype=v0.dtype, device=v0.device)
    beta = torch.zeros(S, max(m - 1, 0), dtype=v0.dtype, device=v0.device)
    q = v0 / v0.norm(dim=1, keepdim=True)
    done = torch.zeros(S, dtype=torch.bool, device=v0.device)
    for j in range(m):
        Q[j] = q
        w = matvec(q)
        alpha[:, j] = (w * q).sum(1)
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - torch.einsum(
                "js,jsp->sp", torch.einsum("jsp,sp->js", Q[: j + 1], w), Q[: j + 1]
            )
        if j == m - 1:
            break
        b = w.norm(dim=1)
        done = done | (b <= 1e-10 * alpha[:, : j + 1].abs().amax(1).clamp_min(1e-300))
        beta[:, j] = torch.where(done, torch.zeros_like(b), b)
        q = torch.where(done[:, None], torch.zeros_like(w), w / b.clamp_min(1e-300)[:, None])
    return alpha, beta


def slq_nodes(
    forward: Forward,
    params: Params,
    x_train: torch.Tensor,
    probes: int = 32,
    steps: int = 80,
    seed: int = 0,
    probe_batch: int = 16,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Lanczos quadrature nodes θ [S, m] and weights τ² [S, m] of H for S Rademacher probes, and P.

    tr f(H) ≈ (P/S)·Σ_s Σ_k τ²_sk f(θ_sk) for any f; computing the nodes once serves every (nβ, γ).
    """
    p1 = _strip(params)
    mv = gn_matvec(forward, p1, x_train)
    P = sum(t[0].numel() for t in p1.values())
    keys = rng.bits(rng.fold_in(rng.key(seed), _PROBE_TAG), probes)[0]
    nodes, weights = [], []
    for lo in range(0, probes, probe_batch):  # bounded memory: Q holds steps x batch x P
        k = keys[lo : lo + probe_batch]
        v0 = torch.where(rng.uniform(k, (P,)) < 0.5, -1.0, 1.0).double().to(x_train.device)
        alpha, beta = lanczos(lambda q: _flat(mv(_unflat(q, p1))), v0, steps)
        T = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
        theta, vecs = torch.linalg.eigh(T)
        nodes.append(theta.clamp_min(0))
        weights.append(vecs[:, 0, :] ** 2)
    return torch.cat(nodes).cpu().numpy(), torch.cat(weights).cpu().numpy(), P


def slq_laplace_llc(
    nodes: np.ndarray,
    weights: np.ndarray,
    n_params: int,
    nbeta: np.ndarray | float,
    gamma: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """SLQ estimate of λ_Lap(nβ, γ) and its standard error over probes (broadcast over nβ, γ)."""
    nb, g = np.broadcast_arrays(np.asarray(nbeta, float), np.asarray(gamma, float))
    a = nb[..., None, None] * nodes
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(a > 0, a / (a + g[..., None, None]), 0.0)
    per_probe = 0.5 * n_params * (weights * f).sum(axis=-1)  # [..., S]
    S = per_probe.shape[-1]
    se = (
        per_probe.std(axis=-1, ddof=1) / math.sqrt(S)
        if S > 1
        else np.full(per_probe.shape[:-1], np.nan)
    )
    return per_probe.mean(axis=-1), se


# ------------------------------------------------------------------------------ checkpoints


@dataclass
class LaplaceResult:
    """λ_Lap on an nβ × γ grid for one checkpoint replica, with how it was computed."""

    values: np.ndarray  # [len(nbetas), len(gammas)]
    nbetas: np.ndarray
    gammas: np.ndarray
    method: str  # 'exact' or 'slq'
    n_params: int
    rank: int | None = None  # exact only
    limit: float | None = None  # rank/2, exact only
    stderr: np.ndarray | None = None  # slq only, same shape as values
    spectrum: Spectrum | None = field(default=None, repr=False)


def laplace_for_checkpoint(
    run_dir: str | Path,
    epoch: int,
    replica: int,
    nbetas: list[float] | np.ndarray,
    gammas: list[float] | np.ndarray,
    method: str = "auto",
    max_exact: int = 8000,
    device: str = "cpu",
    probes: int = 32,
    steps: int = 80,
    seed: int = 0,
) -> LaplaceResult:
    """λ_Lap of a built-in model's checkpoint: exact if min(N·o, P) ≤ max_exact, else SLQ."""
    from grokbasin.config import build_config, load_yaml
    from grokbasin.store.rundir import RunDir
    from grokbasin.train.loop import make_setup

    run = RunDir(run_dir)
    cfg = build_config(load_yaml(run.config), {"device": device})
    if cfg.train.loss != "centred_mse":
        raise GrokbasinError(
            "the Laplace prediction needs train.loss=centred_mse (Gauss-Newton of centred MSE), "
            f"got {cfg.train.loss!r}"
        )
    setup = make_setup(cfg)
    R = len(setup.replicas)
    if not 0 <= replica < R:
        raise GrokbasinError(
            f"replica {replica} out of range: the run has {R} replicas (0..{R - 1})"
        )
    params = run.load_checkpoint(epoch, device)
    one = {k: v[replica : replica + 1] for k, v in params.items()}
    x_train = setup.task.x[setup.task.train_idx[replica]]
    nb = np.asarray(nbetas, float).reshape(-1)
    g = np.asarray(gammas, float).reshape(-1)
    P = sum(t[0].numel() for t in one.values())
    side = min(x_train.shape[0] * setup.task.n_outputs, P)
    if method == "auto":
        method = "exact" if side <= max_exact else "slq"
    if method == "exact":
        if setup.model.name == "quadratic":
            spec = quadratic_spectrum(one, x_train)
        else:
            spec = gauss_newton_spectrum(setup.model.forward, one, x_train)
        vals = laplace_llc(spec, nb[:, None], g[None, :])
        return LaplaceResult(vals, nb, g, "exact", P, spec.rank, laplace_limit(spec), None, spec)
    if method != "slq":
        raise GrokbasinError(f"method must be 'auto', 'exact' or 'slq', got {method!r}")
    nodes, w, P = slq_nodes(setup.model.forward, one, x_train, probes, steps, seed)
    vals, se = slq_laplace_llc(nodes, w, P, nb[:, None], g[None, :])
    return LaplaceResult(vals, nb, g, "slq", P, stderr=se)


__all__ = [
    "LaplaceResult",
    "Spectrum",
    "gauss_newton_spectrum",
    "gn_matvec",
    "lanczos",
    "laplace_for_checkpoint",
    "laplace_limit",
    "laplace_llc",
    "quadratic_spectrum",
    "slq_laplace_llc",
    "slq_nodes",
    "spectrum_from_gram",
]

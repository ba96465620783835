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
    probe_batch: int | None = None,
    basis_bytes: int = 1 << 30,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Lanczos quadrature nodes θ [S, m] and weights τ² [S, m] of H for S Rademacher probes, and P.

    tr f(H) ≈ (P/S)·Σ_s Σ_k τ²_sk f(θ_sk) for any f; computing the nodes once serves every (nβ, γ).
    Probes run in batches whose Lanczos basis (steps × batch × P float64) fits ``basis_bytes``
    (at most 16 per batch): a ~800k-parameter transformer took 11 GB with 16 at once. The
    result does not depend on the batching (each probe has its own key).
    """
    p1 = _strip(params)
    mv = gn_matvec(forward, p1, x_train)
    P = sum(t[0].numel() for t in p1.values())
    if probe_batch is None:
        probe_batch = int(np.clip(basis_bytes // (8 * min(steps, P) * P), 1, 16))
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


def quadratic_slq_nodes(
    params: Params,
    x_train: torch.Tensor,
    probes: int = 8,
    steps: int = 40,
    seed: int = 0,
    probe_batch: int = 8,
) -> tuple[np.ndarray, np.ndarray, float]:
    """SLQ nodes and weights of the quadratic net's G = (1/N)·J_cJ_cᵀ from its structure.

    G has H's nonzero spectrum on R^{N·o}, the smaller side at paper scale (59,519 vs 162,816
    at p = 53, K = 1024), and its products come from ``QuadraticGN`` (no torch.func). Probes
    are centred Rademacher vectors, so Lanczos stays in the centred subspace of dimension
    o·(N−1) where G has no structural zeros; weights are τ²·‖z‖², so tr f(G) ≈ mean over probes
    of Σ_k w_k f(θ_k) (pass n_params = 1 to ``slq_laplace_llc``). Returns (θ, w, o·(N−1)).
    """
    from grokbasin.llc.quadratic_gn import QuadraticGN

    p1 = _strip(params)
    op = QuadraticGN(p1["W"][0], p1["V"][0], x_train.cpu(), torch.float64)
    n, o = int(x_train.shape[0]), int(p1["V"].shape[1])
    keys = rng.bits(rng.fold_in(rng.key(seed), _PROBE_TAG), probes)[0]
    nodes, weights = [], []

    def mv(q: torch.Tensor) -> torch.Tensor:  # [S, N·o] <-> [N, S, o]
        S = q.shape[0]
        u = q.view(S, n, o).transpose(0, 1)
        return op.sample_matvec(u).transpose(0, 1).reshape(S, n * o)

    for lo in range(0, probes, probe_batch):
        k = keys[lo : lo + probe_batch]
        z = torch.where(rng.uniform(k, (n * o,)) < 0.5, -1.0, 1.0).double().view(-1, n, o)
        z = (z - z.mean(dim=1, keepdim=True)).reshape(-1, n * o)
        alpha, beta = lanczos(mv, z, steps)
        T = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
        theta, vecs = torch.linalg.eigh(T)
        nodes.append(theta.clamp_min(0))
        weights.append(vecs[:, 0, :] ** 2 * z.pow(2).sum(1, keepdim=True))
    return torch.cat(nodes).numpy(), torch.cat(weights).numpy(), float(o * (n - 1))


def slq_count(
    nodes: np.ndarray, weights: np.ndarray, n_params: float, tol: float
) -> tuple[float, float, float]:
    """Bounds on #{μ > tol} (the numeric rank) from SLQ, and the standard error over probes.

    Per probe z, Lanczos' Gauss quadrature (nodes θ_1 < … < θ_m, weights w_i) brackets the
    spectral measure's distribution σ_z(t) = Σ_{μ_i ≤ t} (z·q_i)² by the Chebyshev–Markov–
    Stieltjes inequalities: Σ_{i<j} w_i ≤ σ_z(θ_j) and σ_z(θ_j) ≤ Σ_{i≤j} w_i. For θ_j ≤ tol <
    θ_{j+1} this gives Σ_{i<j} w_i ≤ σ_z(tol) ≤ Σ_{i≤j+1} w_i, and E_z σ_z(tol) = #{μ ≤ tol} for
    probes with E zzᵀ = I on the space, so (lower, upper) = total − (upper, lower) mass averaged
    over probes brackets the count up to probe noise; ``se`` is the larger of the two bounds'
    standard errors over probes. Returns (lower, upper, se). Exact arithmetic is assumed, which
    full reorthogonalisation approximates.
    """
    order = np.argsort(nodes, axis=-1)
    th = np.take_along_axis(nodes, order, -1)
    w = np.take_along_axis(weights, order, -1) * n_params
    total = w.sum(-1)
    j = (th <= tol).sum(-1)  # nodes at or below tol, per probe
    cum = np.concatenate([np.zeros_like(w[:, :1]), np.cumsum(w, -1)], -1)  # cum[:, i] = Σ_{<i}
    rows = np.arange(w.shape[0])
    below_lo = cum[rows, np.maximum(j - 1, 0)]  # Σ_{i<j} (1-based j) = first j-1 weights
    below_hi = cum[rows, np.minimum(j + 1, w.shape[1])]  # Σ_{i≤j+1}
    lo, hi = total - below_hi, total - below_lo
    S = lo.size
    se = max(lo.std(ddof=1), hi.std(ddof=1)) / math.sqrt(S) if S > 1 else float("nan")
    return float(lo.mean()), float(hi.mean()), float(se)


def quadratic_rank_bounds(params: Params, x_train: torch.Tensor, tol: float) -> tuple[int, int]:
    """Deterministic bounds on rank(J_c) for the quadratic net: o·rank(F_c) ≤ rank ≤ o·(N−1).

    The V-block of J_c is I_o ⊗ F_c (F_c = P⊥h², [N, K]), so its rank o·rank(F_c), read from
    the singular values of F_c at the same eigenvalue threshold ``tol`` of H = J_cᵀJ_c/N, is
    a lower bound; centring over N samples caps the rank at o·(N−1) from above.
    """
    p1 = _strip(params)
    W, V = p1["W"][0], p1["V"][0]
    p = W.shape[0] // 2
    h = W[x_train[:, 0]] + W[x_train[:, 1] + p]
    Fc = h * h
    Fc = Fc - Fc.mean(dim=0, keepdim=True)
    n, o = int(x_train.shape[0]), int(V.shape[0])
    sv2 = torch.linalg.svdvals(Fc).pow(2) / n  # eigenvalues of the V-block of H
    return o * int((sv2 > tol).sum()), o * (n - 1)


# ------------------------------------------------------------------------------ checkpoints


@dataclass
class LaplaceResult:
    """λ_Lap on an nβ × γ grid for one checkpoint replica, with how it was computed."""

    values: np.ndarray  # [len(nbetas), len(gammas)]
    nbetas: np.ndarray
    gammas: np.ndarray
    method: str  # 'exact' or 'slq'
    n_params: int
    rank: float | None = None  # exact; SLQ estimate for the structured quadratic SLQ
    limit: float | None = None  # rank/2
    stderr: np.ndarray | None = None  # slq only, same shape as values
    spectrum: Spectrum | None = field(default=None, repr=False)
    rank_stderr: float | None = None  # SLQ standard error of rank (0 when exact)
    rank_bounds: tuple[float, float] | None = None  # (lower, upper) bracket of rank


def laplace_for_checkpoint(
    run_dir: str | Path,
    epoch: int,
    replica: int,
    nbetas: list[float] | np.ndarray,
    gammas: list[float] | np.ndarray,
    method: str = "auto",
    max_exact: int = 8000,
    device: str = "cpu",
    probes: int | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> LaplaceResult:
    """λ_Lap of a built-in model's checkpoint: exact if min(N·o, P) ≤ max_exact, else SLQ.

    SLQ defaults: the quadratic net's structured products, 4 probes × 24 Lanczos steps (at
    p = 53, K = 1024 the paper sampler's λ_Lap has a probe standard error ~0.4% and no change
    from 20 to 40 steps); other models: torch.func products, 32 probes × 80 steps.
    """
    from grokbasin.store.binding import run_config
    from grokbasin.store.rundir import RunDir
    from grokbasin.train.loop import make_setup

    run = RunDir(run_dir)
    cfg = run_config(run).model_copy(update={"device": device})
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
        return LaplaceResult(
            vals, nb, g, "exact", P, spec.rank, laplace_limit(spec), np.zeros_like(vals), spec,
            0.0, (spec.rank, spec.rank),
        )  # fmt: skip
    if method != "slq":
        raise GrokbasinError(f"method must be 'auto', 'exact' or 'slq', got {method!r}")
    if setup.model.name == "quadratic":  # structured products in the smaller sample space
        nodes, w, _ = quadratic_slq_nodes(one, x_train, probes or 4, steps or 24, seed)
        vals, se = slq_laplace_llc(nodes, w, 1, nb[:, None], g[None, :])
        # the exact path's threshold: μ > μ_max·max(N·o, P)·eps64, μ_max the largest Ritz value
        tol = float(nodes.max()) * max(x_train.shape[0] * setup.task.n_outputs, P) * F64_EPS
        q_lo, q_hi, rank_se = slq_count(nodes, w, 1, tol)
        d_lo, d_hi = quadratic_rank_bounds(one, x_train, tol)
        lo, hi = max(q_lo, d_lo), min(q_hi, d_hi)  # quadrature bracket within the exact bounds
        rank = 0.5 * (lo + hi)
        return LaplaceResult(vals, nb, g, "slq", P, rank, rank / 2, se, None, rank_se, (lo, hi))
    nodes, w, P = slq_nodes(setup.model.forward, one, x_train, probes or 32, steps or 80, seed)
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
    "quadratic_rank_bounds",
    "quadratic_slq_nodes",
    "quadratic_spectrum",
    "slq_count",
    "slq_laplace_llc",
    "slq_nodes",
    "spectrum_from_gram",
]

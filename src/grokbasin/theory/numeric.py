"""Numeric counterparts of the closed forms, computed on a checkpoint (SPEC §3.4, §3.5).

The closed forms count identifiable coordinates over a generic input distribution; on one-hot
modular data the network is only seen through the data, so the honest data-aware number is the
Jacobian rank: λ_num = rank(J)/2 with J = ∂f(X)/∂θ ([n·o, P] per replica), exact at minimally
singular points and an upper bound otherwise.

Rank tolerance. The rank is read from the smaller Gram matrix (J Jᵀ or JᵀJ) in float64: its
eigenvalues are the squared singular values s_i of J. A singular value counts when
s_i > s_max · max(n·o, P) · rtol, with rtol = float32 machine epsilon by default (checkpoints are
float32, so structure below that relative level is rounding noise). Forming the Gram squares the
condition number, which float64 absorbs (its noise sits near s_max·1e-8 ≪ the float32-based
threshold). Every result reports the gap s_rank / s_rank+1 so a user sees how clear the cut is.

All tensors carry the leading replica axis R; replicas are processed in memory-bounded chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from grokbasin.types import Params

F64_EPS = float(torch.finfo(torch.float64).eps)
F32_EPS = float(torch.finfo(torch.float32).eps)
# s_i / s_max cut-offs for rank profiles; 1e-5 stays above the float64 Gram noise (~1e-6 at n = 1e4)
PROFILE_LEVELS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


@dataclass(frozen=True)
class RankResult:
    """Numeric rank per replica with what is needed to judge it."""

    rank: torch.Tensor  # [R] int64
    tol: torch.Tensor  # [R] singular-value threshold
    sv_max: torch.Tensor  # [R] largest singular value
    sv_last_kept: torch.Tensor  # [R] s_rank (smallest counted)
    sv_first_dropped: torch.Tensor  # [R] s_rank+1 (0 when the rank is full)
    shape: tuple[int, int]  # (rows, cols) of the matrix whose rank this is
    profile: torch.Tensor  # [R, len(PROFILE_LEVELS)] #{s_i > s_max·level}: how sharp the rank is

    @property
    def gap(self) -> torch.Tensor:
        """s_rank / s_rank+1 per replica (inf when nothing was dropped or s_rank+1 = 0)."""
        return self.sv_last_kept / self.sv_first_dropped

    def as_dicts(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per replica."""
        return [
            {
                "rank": int(r),
                "tol": float(t),
                "sv_max": float(m),
                "sv_last_kept": float(k),
                "sv_first_dropped": float(d),
                "gap": float(g),
                **{
                    f"rank_rel_{lv:.0e}": int(c) for lv, c in zip(PROFILE_LEVELS, prof, strict=True)
                },
            }
            for r, t, m, k, d, g, prof in zip(
                self.rank,
                self.tol,
                self.sv_max,
                self.sv_last_kept,
                self.sv_first_dropped,
                self.gap,
                self.profile.tolist(),
                strict=True,
            )
        ]


def rank_from_singular_values(
    sv: torch.Tensor, shape: tuple[int, int], rtol: float | None = None
) -> RankResult:
    """Rank of matrices with singular values sv [R, m] (any order), scale-aware threshold."""
    rtol = F32_EPS if rtol is None else rtol
    sv = sv.sort(dim=-1, descending=True).values.clamp_min(0)
    top = sv[:, 0]
    tol = top * max(shape) * rtol
    rank = (sv > tol[:, None]).sum(-1)
    pad = torch.cat([sv, sv.new_zeros(sv.shape[0], 1)], dim=1)
    kept = pad.gather(1, (rank - 1).clamp_min(0)[:, None])[:, 0]
    dropped = pad.gather(1, rank[:, None])[:, 0]
    levels = torch.tensor(PROFILE_LEVELS, dtype=sv.dtype, device=sv.device)
    profile = (sv[:, None, :] > top[:, None, None] * levels[None, :, None]).sum(-1)
    return RankResult(rank, tol, top, kept, dropped, shape, profile)


def rank_from_gram(
    gram: torch.Tensor, shape: tuple[int, int], rtol: float | None = None
) -> RankResult:
    """Rank of J from its Gram matrix [R, m, m] (J Jᵀ or JᵀJ), via float64 eigenvalues.

    The Gram is formed and diagonalised in float64, so by default an eigenvalue counts when
    μ > μ_max·max(shape)·eps64 — the same cut as ``llc.laplace`` — i.e. a singular-value cut of
    σ_max·sqrt(max(shape)·eps64). (A float32 cut here undercounted the data-limit rank p·(N−1)
    of the trained default run: 4756 instead of 4830, inside a smooth tail of real eigenvalues.)
    """
    eig = torch.linalg.eigvalsh(gram.double())
    if rtol is None:
        rtol = math.sqrt(max(shape) * F64_EPS) / max(shape)
    return rank_from_singular_values(eig.clamp_min(0).sqrt(), shape, rtol)


def matrix_rank(a: torch.Tensor, rtol: float | None = None) -> RankResult:
    """Rank of [R, m, n] matrices by SVD (for the small feature matrices)."""
    return rank_from_singular_values(torch.linalg.svdvals(a.double()), tuple(a.shape[1:]), rtol)


def onehot_inputs(tokens: torch.Tensor, p: int) -> torch.Tensor:
    """x = [e_a; e_b] ∈ R^{2p} for operand tokens [..., 2] (float64)."""
    a = torch.nn.functional.one_hot(tokens[..., 0], p)
    b = torch.nn.functional.one_hot(tokens[..., 1], p)
    return torch.cat([a, b], dim=-1).double()


def _batched(x: torch.Tensor, r: int) -> torch.Tensor:
    """Shared inputs [n, d] broadcast to [R, n, d]; per-replica inputs pass through."""
    return x.expand(r, *x.shape) if x.dim() == 2 else x


def quadratic_jacobian(W: torch.Tensor, V: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """J = ∂f(X)/∂(W, V) of f = V σ(Wᵀx) for dense inputs X [n, d] or [R, n, d] -> [R, n, o, P].

    Columns follow the parameter layout: W [d, K] flattened, then V [o, K] flattened.
    """
    W, V = W.double(), V.double()
    R, o = W.shape[0], V.shape[1]
    X = _batched(X.double(), R)
    H = X @ W  # [R, n, K]
    jw = 2.0 * V[:, None, :, None, :] * H[:, :, None, None, :] * X[:, :, None, :, None]
    eye = torch.eye(o, dtype=H.dtype, device=H.device)
    jv = eye[None, None, :, :, None] * (H * H)[:, :, None, None, :]
    n = H.shape[1]
    return torch.cat([jw.reshape(R, n, o, -1), jv.reshape(R, n, o, -1)], dim=-1)


def quadratic_gram(
    W: torch.Tensor, V: torch.Tensor, X: torch.Tensor, centred: bool = True
) -> torch.Tensor:
    """J Jᵀ [R, n·o, n·o] of the quadratic net without forming J (float64).

    (J Jᵀ)[(n,k),(m,l)] = δ_kl·Σ_j h²_nj h²_mj + 4·(x_n·x_m)·Σ_j V_kj V_lj h_nj h_mj; ``centred``
    centres J over samples per output first (J_c = P⊥J), the Jacobian the centred loss sees.
    """
    W, V = W.double(), V.double()
    R, o = W.shape[0], V.shape[1]
    X = _batched(X.double(), R)
    H = X @ W
    n = H.shape[1]
    H2 = H * H
    A = (V[:, None, :, :] * H[:, :, None, :]).reshape(R, n * o, -1)
    G = (A @ A.transpose(1, 2)).view(R, n, o, n, o)
    G.mul_(4.0 * (X @ X.transpose(1, 2))[:, :, None, :, None])
    eye = torch.eye(o, dtype=G.dtype, device=G.device)
    G.add_((H2 @ H2.transpose(1, 2))[:, :, None, :, None] * eye[None, None, :, None, :])
    if centred:
        G.sub_(G.mean(dim=1, keepdim=True)).sub_(G.mean(dim=3, keepdim=True))
    return G.view(R, n * o, n * o)


def generic_jacobian(
    forward: Callable[[Params, torch.Tensor], torch.Tensor], params: Params, x: torch.Tensor
) -> torch.Tensor:
    """J [R, n, o, P] of any replica-batched model forward(params, x) by torch.func.

    Columns follow the order of ``params``' keys, each tensor flattened.
    """
    from torch.func import jacrev, vmap

    def one(p1: Params, x1: torch.Tensor) -> torch.Tensor:
        return forward({k: v[None] for k, v in p1.items()}, x1)[0]

    x_dim = 0 if x.dim() == 3 else None
    jac = vmap(jacrev(one), in_dims=(0, x_dim))(params, x)
    R, n, o = next(iter(jac.values())).shape[:3]
    return torch.cat([jac[k].reshape(R, n, o, -1) for k in params], dim=-1)


def jacobian_rank_from_jacobian(
    J: torch.Tensor, centred: bool = True, rtol: float | None = None
) -> RankResult:
    """Rank of J [R, n, o, P] (centred over samples if asked), via its smaller Gram matrix."""
    J = J.double()
    if centred:
        J = J - J.mean(dim=1, keepdim=True)
    R = J.shape[0]
    J = J.reshape(R, -1, J.shape[-1])
    rows, cols = J.shape[1:]
    gram = J @ J.transpose(1, 2) if rows <= cols else J.transpose(1, 2) @ J
    return rank_from_gram(gram, (rows, cols), rtol)


def quadratic_jacobian_rank(
    W: torch.Tensor,
    V: torch.Tensor,
    X: torch.Tensor,
    centred: bool = True,
    rtol: float | None = None,
    max_elems: int = 1 << 27,
) -> RankResult:
    """rank(J) of the quadratic net on dense inputs X, through the smaller Gram, replica-chunked."""
    R, d, K = W.shape
    o = V.shape[1]
    n = X.shape[-2]
    rows, cols = n * o, K * (d + o)
    per = rows * cols + cols * cols if rows > cols else rows * (rows + K)
    chunk = max(1, max_elems // max(per, 1))
    parts = []
    for lo in range(0, R, chunk):  # bounded memory; one chunk in the usual case
        sl = slice(lo, lo + chunk)
        Xs = X if X.dim() == 2 else X[sl]
        if rows <= cols:
            parts.append(
                rank_from_gram(quadratic_gram(W[sl], V[sl], Xs, centred), (rows, cols), rtol)
            )
        else:
            parts.append(
                jacobian_rank_from_jacobian(quadratic_jacobian(W[sl], V[sl], Xs), centred, rtol)
            )
    return RankResult(
        *(
            torch.cat([getattr(p, f) for p in parts])
            for f in ("rank", "tol", "sv_max", "sv_last_kept", "sv_first_dropped")
        ),
        shape=(rows, cols),
        profile=torch.cat([p.profile for p in parts]),
    )


def effective_width(
    V: torch.Tensor, tau: float | None = None, rel_tau: float = 1e-2
) -> torch.Tensor:
    """K_eff = #{j : ‖V[:, j]‖ > τ} per replica (Thm 5.5) -> [R] int64.

    τ defaults to ``rel_tau`` (1%) times the replica's largest unit norm, so the count does not
    depend on the output scale; pass an absolute ``tau`` to override.
    """
    norms = V.double().norm(dim=1)  # [R, K]
    thr = (
        norms.amax(dim=1, keepdim=True) * rel_tau
        if tau is None
        else torch.full_like(norms[:, :1], tau)
    )
    return (norms > thr).sum(dim=1)


def lazy_feature_rank(W: torch.Tensor, X: torch.Tensor, rtol: float | None = None) -> RankResult:
    """rank(σ(XW)) per replica for a frozen first layer W [R, d, K] on dense X (Thm 5.2)."""
    R = W.shape[0]
    H = _batched(X.double(), R) @ W.double()
    return matrix_rank(H * H, rtol)


def tian_backprop_gradient(
    W: torch.Tensor, V: torch.Tensor, X: torch.Tensor, Y: torch.Tensor
) -> torch.Tensor:
    """Tian's G_F = P⊥(Y − F Vᵀ) V with F = σ(XW) (rows = samples) -> [R, n, K] (SPEC §3.5)."""
    R = W.shape[0]
    H = _batched(X.double(), R) @ W.double()
    F = H * H
    resid = _batched(Y.double(), R) - F @ V.double().transpose(1, 2)
    resid = resid - resid.mean(dim=1, keepdim=True)
    return resid @ V.double()


def unit_energy(W: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Per-unit energy E(w_j) = ½‖Ỹᵀσ(Xw_j)‖², Ỹ = P⊥Y -> [R, K] (Tian's Stage-II objective)."""
    R = W.shape[0]
    H = _batched(X.double(), R) @ W.double()
    Yc = _batched(Y.double(), R)
    Yc = Yc - Yc.mean(dim=1, keepdim=True)
    return 0.5 * (Yc.transpose(1, 2) @ (H * H)).pow(2).sum(dim=1)


def modular_numeric(
    params: Params,
    task: Any,
    forward: Callable | None = None,
    centred: bool = True,
    rtol: float | None = None,
    tau: float | None = None,
    rel_tau: float = 1e-2,
    full: bool = True,
) -> list[dict[str, Any]]:
    """Numeric LLCs of every replica on modular data: one dict per replica.

    Keys: llc_train = rank(J_c)/2 on the replica's training split, llc_full = rank(J)/2 on all
    pairs (both centred over samples when ``centred``), their rank diagnostics, and for the
    quadratic net (params W, V) k_eff, lazy_rank (rank σ(XW) on all pairs) and llc_lazy =
    (p/2)·lazy_rank. ``forward`` is only needed for other models (generic torch.func Jacobian).
    """
    p = task.p
    quadratic = set(params) == {"W", "V"}
    if not quadratic and forward is None:
        raise ValueError("a model other than the quadratic net needs its forward function")
    results: dict[str, RankResult] = {}
    splits = {"train": task.x[task.train_idx]}
    if full:
        splits["full"] = task.x
    for name, tokens in splits.items():
        if quadratic:
            results[name] = quadratic_jacobian_rank(
                params["W"], params["V"], onehot_inputs(tokens, p), centred, rtol
            )
        else:
            J = generic_jacobian(forward, params, tokens)
            results[name] = jacobian_rank_from_jacobian(J, centred, rtol)
    rows: list[dict[str, Any]] = [{} for _ in range(next(iter(params.values())).shape[0])]
    for name, res in results.items():
        for row, diag in zip(rows, res.as_dicts(), strict=True):
            row[f"llc_{name}"] = diag["rank"] / 2
            row.update({f"{name}_{k}": v for k, v in diag.items()})
    if quadratic:
        k_eff = effective_width(params["V"], tau, rel_tau)
        lazy = lazy_feature_rank(params["W"], onehot_inputs(task.x, p), rtol).rank
        for row, k, lr in zip(rows, k_eff.tolist(), lazy.tolist(), strict=True):
            row.update(k_eff=k, lazy_rank=lr, llc_lazy=0.5 * p * lr)
    return rows


def run_numeric(run_path: Any, epochs: int | Sequence[int], **kw: Any) -> list[dict[str, Any]]:
    """``modular_numeric`` on stored checkpoints of a run directory: one row per epoch × replica.

    The checkpoints are stacked on the replica axis (each with its replica's training split), so
    they go through one batched computation, chunked only to bound memory. Rows carry epoch,
    replica, seed, lr and weight_decay. ``kw`` goes to :func:`modular_numeric`.
    """
    from grokbasin.store.binding import run_config
    from grokbasin.store.rundir import RunDir
    from grokbasin.train.loop import make_setup

    run = run_path if isinstance(run_path, RunDir) else RunDir(run_path)
    eps = [epochs] if isinstance(epochs, int) else list(epochs)
    cfg = run_config(run).model_copy(update={"device": "cpu"})
    setup = make_setup(cfg)
    ckpts = [run.load_checkpoint(e) for e in eps]
    params = {k: torch.cat([c[k] for c in ckpts]) for k in ckpts[0]}
    E = len(eps)
    task = replace(
        setup.task,
        train_idx=setup.task.train_idx.repeat(E, 1),
        val_idx=setup.task.val_idx.repeat(E, 1),
    )
    rows = modular_numeric(params, task, setup.model.forward, **kw)
    R = len(setup.replicas)
    for i, row in enumerate(rows):
        row.update(epoch=eps[i // R], replica=i % R, **setup.replicas[i % R])
    return rows

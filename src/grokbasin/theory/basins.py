"""The two basins of paper A's basin-selection claim, built and counted (issue 19 item 4).

- **Generalising basin** (Thm 5.5): λ = K_eff(d + o − 1)/2 with K_eff = #{j : ‖V[:, j]‖ > τ}.
  :func:`effective_width_rows` counts K_eff for a stack of checkpoints in one tensor computation
  and returns one row per checkpoint, ready to sit beside λ̂ in a trajectory figure.
- **Memorising (lazy) basin** (Thm 5.2, Cor 5.3): W frozen at its random initialisation and V the
  centred ridge solution V = (F̃ᵀF̃ + ηI)⁻¹F̃ᵀỸ with F̃ = P⊥σ(XW), Ỹ = P⊥Y on the training set.
  :func:`lazy_ridge_V` solves it for every replica at once; :func:`lazy_basin` builds it for a run
  config with the same initialisation as training.

Threshold τ (ours, not the paper's: the paper only says "small"). Default: τ = 10⁻² · max_j
‖V[:, j]‖ per checkpoint (``rel_tau``), the same rule as ``theory.numeric.effective_width``. A
relative cut does not move when weight decay or the scaling symmetry w → αw, v → α⁻²v shrinks
every unit alike, and 1% of the largest output weight contributes ≤ 10⁻⁴ of its squared output
norm when the first-layer norms are comparable. An absolute ``tau`` overrides it. Each row also
carries the counts at 10⁻¹ and 10⁻³ so a reader sees how sharp the cut is.

Ridge parameter η (ours): η = ``eta_rel`` · tr(F̃ᵀF̃)/K, i.e. relative to the mean eigenvalue of
the feature Gram, default 10⁻⁶; the solve is in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from grokbasin.theory.closed_form import effective_width_llc

REL_TAU = 1e-2
PROFILE_REL_TAUS = (1e-1, 1e-3)
ETA_REL = 1e-6


def column_norms(V: torch.Tensor) -> torch.Tensor:
    """‖V[:, j]‖ per replica and unit: V [R, o, K] -> [R, K] (float64)."""
    return V.double().norm(dim=1)


def count_above(norms: torch.Tensor, tau: float | None, rel_tau: float) -> torch.Tensor:
    """#{j : norms[r, j] > τ_r} -> [R]; τ_r = rel_tau·max_j norms[r, j] unless ``tau`` is given."""
    thr = norms.amax(dim=1) * rel_tau if tau is None else torch.full_like(norms[:, 0], tau)
    return (norms > thr[:, None]).sum(dim=1)


def data_cap(outputs: int, n_train: int) -> float:
    """The data-aware ceiling o·(N − 1)/2: rank of the centred Jacobian on N samples ≤ o·(N−1)."""
    return 0.5 * outputs * max(n_train - 1, 0)


def effective_width_rows(
    V: torch.Tensor,
    d: int,
    epochs: Sequence[int] | None = None,
    tau: float | None = None,
    rel_tau: float = REL_TAU,
    n_train: int | None = None,
) -> list[dict[str, Any]]:
    """K_eff and Thm 5.5's K_eff(d + o − 1)/2 for checkpoints V [C, o, K]: one row each.

    Rows: epoch (or index), k_eff, tau (the threshold used), tau_rule, max_norm, median_norm,
    k_eff at the profile levels, llc_keff = K_eff(d+o−1)/2 (paper), llc_keff_onehot =
    K_eff(d+o−2)/2 (one-hot inputs have rank d − 1, ours) and, with ``n_train``, llc_keff_capped =
    min(llc_keff, o(N−1)/2) (the data-aware ceiling). One batched computation, no loop over C.
    """
    C, o, K = V.shape
    norms = column_norms(V)
    k = count_above(norms, tau, rel_tau)
    thr = norms.amax(dim=1) * rel_tau if tau is None else torch.full((C,), float(tau))
    prof = {lv: count_above(norms, None, lv).tolist() for lv in PROFILE_REL_TAUS}
    med = norms.median(dim=1).values.tolist()
    rule = f"{rel_tau:g}·max‖V[:,j]‖" if tau is None else f"absolute {tau:g}"
    eps = list(range(C)) if epochs is None else [int(e) for e in epochs]
    if len(eps) != C:
        raise ValueError(f"epochs has {len(eps)} entries for {C} checkpoints")
    cap = None if n_train is None else data_cap(o, n_train)
    rows = []
    for i in range(C):
        lam = effective_width_llc(int(k[i]), d, o)
        row = {
            "epoch": eps[i],
            "width": K,
            "k_eff": int(k[i]),
            "tau": float(thr[i]),
            "tau_rule": rule,
            "max_norm": float(norms[i].max()),
            "median_norm": float(med[i]),
            **{f"k_eff_rel_{lv:.0e}": int(prof[lv][i]) for lv in PROFILE_REL_TAUS},
            "llc_keff": lam,
            "llc_keff_onehot": effective_width_llc(int(k[i]), d - 1, o) if d > 1 else lam,
        }
        if cap is not None:
            row.update(data_cap=cap, llc_keff_capped=min(lam, cap))
        rows.append(row)
    return rows


def run_effective_width(
    run_path: Any, epochs: str | Sequence[int] = "all", replica: int = 0, **kw: Any
) -> list[dict[str, Any]]:
    """:func:`effective_width_rows` for stored checkpoints of a quadratic-net run directory.

    ``epochs``: 'all', 'last' or a list. The checkpoints' V of one training replica are stacked and
    counted together; rows carry the data cap o(N−1)/2 of the run's training split.
    """
    from grokbasin.store.binding import run_config
    from grokbasin.store.rundir import RunDir

    run = run_path if isinstance(run_path, RunDir) else RunDir(run_path)
    have = run.checkpoint_epochs()
    eps = have if epochs == "all" else have[-1:] if epochs == "last" else list(epochs)
    cfg = run_config(run)  # verified to be the run's (store.binding), as every reader's
    V = torch.stack([run.load_checkpoint(e)["V"][replica] for e in eps])
    d = 2 * cfg.task.p
    return effective_width_rows(V, d, eps, n_train=cfg.task.n_train, **kw)


# ------------------------------------------------------------------------ lazy (memorising)


def features(W: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """σ(XW) = (W[a] + W[p + b])² for tokens [R, n, 2] (or [n, 2]) -> [R, n, K] float64."""
    W = W.double()
    p = W.shape[1] // 2
    if tokens.dim() == 2:
        tokens = tokens.expand(W.shape[0], *tokens.shape)
    r = torch.arange(W.shape[0])[:, None]
    h = W[r, tokens[..., 0]] + W[r, tokens[..., 1] + p]
    return h * h


def _centre(a: torch.Tensor) -> torch.Tensor:
    """P⊥a: subtract the mean over samples (axis 1)."""
    return a - a.mean(dim=1, keepdim=True)


@dataclass(frozen=True)
class LazyFit:
    """The centred ridge read-out of frozen random features, per replica."""

    V: torch.Tensor  # [R, o, K] float32, the network's layout
    eta: torch.Tensor  # [R] ridge parameter used
    feature_rank: torch.Tensor  # [R] rank of F̃ = P⊥σ(XW) on the training set
    residual: torch.Tensor  # [R] centred training loss ½‖P⊥(Y − FVᵀ)‖²_F/N at the fit


def lazy_ridge_V(
    W: torch.Tensor,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    outputs: int,
    eta_rel: float = ETA_REL,
) -> LazyFit:
    """V = (F̃ᵀF̃ + ηI)⁻¹F̃ᵀỸ for W [R, d, K] frozen, training tokens [R, N, 2], labels [R, N].

    η = eta_rel · tr(F̃ᵀF̃)/K. Solved in the smaller of the primal (K×K) and dual (N×N) forms,
    which are the same matrix identity: (F̃ᵀF̃ + ηI)⁻¹F̃ᵀ = F̃ᵀ(F̃F̃ᵀ + ηI)⁻¹.
    """
    from grokbasin.theory.numeric import matrix_rank

    F = features(W, tokens)
    R, N, K = F.shape
    Ft = _centre(F)
    lab = labels if labels.dim() == 2 else labels.expand(R, -1)
    Yt = _centre(torch.nn.functional.one_hot(lab, outputs).double())
    eta = Ft.square().sum(dim=(1, 2)) / K * eta_rel  # [R]
    if K <= N:
        G = Ft.transpose(1, 2) @ Ft + eta[:, None, None] * torch.eye(K, dtype=F.dtype)
        Vt = torch.linalg.solve(G, Ft.transpose(1, 2) @ Yt)  # [R, K, o]
    else:
        G = Ft @ Ft.transpose(1, 2) + eta[:, None, None] * torch.eye(N, dtype=F.dtype)
        Vt = Ft.transpose(1, 2) @ torch.linalg.solve(G, Yt)
    resid = _centre(Yt - Ft @ Vt)
    loss = 0.5 * resid.square().sum(dim=(1, 2)) / N
    rank = matrix_rank(Ft).rank
    return LazyFit(Vt.transpose(1, 2).float().contiguous(), eta, rank, loss)


def lazy_basin(cfg: Any, eta_rel: float = ETA_REL) -> tuple[dict[str, torch.Tensor], LazyFit]:
    """The memorising solution of Thm 5.2 for a run config: W at the training init, V the ridge fit.

    Returns params {W, V} [R, ...] (one replica per training replica of ``cfg``) and the fit.
    """
    from grokbasin.train.loop import init_params, make_setup

    s = make_setup(cfg)
    W = init_params(s)["W"]
    idx = s.task.train_idx
    fit = lazy_ridge_V(W, s.task.x[idx], s.task.y[idx], s.task.n_outputs, eta_rel)
    return {"W": W.float().contiguous(), "V": fit.V}, fit


def split_accuracy(
    params: dict[str, torch.Tensor], task: Any, centred: bool = False
) -> dict[str, list[float]]:
    """Train and validation accuracy per replica; ``centred`` adds the offset the loss ignores.

    The centred MSE cannot see a constant per-output offset, and the network has no bias, so the
    raw argmax (what training reports) and the argmax of P⊥ŷ + ȳ_train (the prediction the
    centred fit makes, offset fixed on the training set) can differ.
    """
    F = features(params["W"], task.x)  # [R, M, K] on all pairs
    pred = F @ params["V"].double().transpose(1, 2)  # [R, M, o]
    R = pred.shape[0]
    out: dict[str, list[float]] = {}
    r = torch.arange(R)[:, None]
    tr = task.train_idx
    if centred:
        y1 = torch.nn.functional.one_hot(task.y, pred.shape[-1]).double()
        shift = y1[tr].mean(dim=1) - pred[r, tr].mean(dim=1)  # [R, o]
        pred = pred + shift[:, None, :]
    for name, idx in (("train", tr), ("val", task.val_idx)):
        hit = pred[r, idx].argmax(dim=-1) == task.y[idx]
        out[f"{name}_acc"] = hit.double().mean(dim=1).tolist()
    return out

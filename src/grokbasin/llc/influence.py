"""Susceptibilities and Bayesian influence functions from per-draw loss traces (pure numpy).

Both are posterior covariances estimated from SGLD draws of the localised tempered posterior,
batched over any leading axes (checkpoints, training replicas, nβ values): a trace array is
[..., C, D] (chains × draws) or [..., C, D, m] (chains × draws × samples), as
``SampleResult.observables`` / ``SampleResult.sample_losses`` reshaped by ``Estimate._gbc``.
Formulas and sources: docs/theory.md, "Susceptibilities and Bayesian influence functions".

* :func:`bif` — devinterp 2.x ``compute_bif`` (sequence level): the Pearson correlation (or the
  covariance, ddof = 1) of two samples' losses over the pooled chain × draw samples; Kreer et al.
  2025 define BIF(z_i, φ) = −Cov(ℓ_i, φ), which is ``kind="influence"``.
* :func:`susceptibilities` — devinterp 2.x ``compute_susceptibilities`` (Baker et al. 2025,
  App. C.4): χ_j = E_r[φ·L] − E_r[φ·ℓ_j] − E_r[φ]·(E_f[L] − E_f[ℓ_j]) with φ = L − L̄(w*), where
  L is the sampling task's loss per draw, ℓ_j probe sample j's, r the (weight-restricted) run
  and f the unrestricted one; with r = f this is −Cov(φ, ℓ_j − L).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Kind = Literal["correlation", "covariance", "influence"]
KINDS = ("correlation", "covariance", "influence")


def _samples(a: np.ndarray, chains: str, name: str) -> np.ndarray:
    """[..., C, D, m] -> [..., N, m]: chains pooled ('stack', N = C·D) or averaged ('mean')."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 3:
        raise ValueError(f"{name} must be [..., chains, draws, samples], got shape {a.shape}")
    if chains == "stack":
        return a.reshape(*a.shape[:-3], a.shape[-3] * a.shape[-2], a.shape[-1])
    if chains == "mean":
        return a.mean(axis=-3)
    raise ValueError(f"chains must be 'stack' or 'mean', got {chains!r}")


def bif(
    losses: np.ndarray,
    other: np.ndarray | None = None,
    kind: Kind = "correlation",
    chains: Literal["stack", "mean"] = "stack",
) -> np.ndarray:
    """[..., m1, m2] influence between samples of ``losses`` [..., C, D, m1] and ``other``
    [..., C, D, m2] (default: ``losses`` itself) over posterior draws.

    kind: 'correlation' (devinterp's default), 'covariance' (devinterp's
    compute_covariance=True; ddof = 1) or 'influence' (Kreer et al.'s BIF = −covariance).
    chains: 'stack' pools chains × draws (devinterp's recommended), 'mean' averages the chains
    draw by draw first. A sample with no variance gives NaN correlations.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {' | '.join(KINDS)}, got {kind!r}")
    x = _samples(losses, chains, "losses")
    y = x if other is None else _samples(other, chains, "other")
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"losses and other must share [..., chains, draws]: {x.shape[:-1]} vs {y.shape[:-1]}"
        )
    N = x.shape[-2]
    if N < 2:
        raise ValueError("bif needs at least 2 posterior samples (chains × draws)")
    xc = x - x.mean(axis=-2, keepdims=True)
    yc = y - y.mean(axis=-2, keepdims=True)
    cov = np.swapaxes(xc, -1, -2) @ yc / (N - 1)
    if kind == "covariance":
        return cov
    if kind == "influence":
        return -cov
    sx = np.sqrt((xc**2).sum(axis=-2) / (N - 1))
    sy = np.sqrt((yc**2).sum(axis=-2) / (N - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / (sx[..., :, None] * sy[..., None, :])


def susceptibilities(
    sampling: np.ndarray,
    probe: np.ndarray,
    init_loss: np.ndarray,
    full_sampling: np.ndarray | None = None,
    full_probe: np.ndarray | None = None,
) -> np.ndarray:
    """[..., m] susceptibility of each probe sample (devinterp 2.x, Baker et al. 2025).

    ``sampling`` [..., C, D]: the sampling task's mean loss per draw in the (restricted) run;
    ``probe`` [..., C, D, m]: the probe samples' losses per draw in the same run;
    ``init_loss`` [...] or [..., C]: the unrestricted run's L(w*) (averaged over its last axis
    when it has the chain axis); ``full_sampling`` / ``full_probe``: the unrestricted run's
    traces (default: this run, which makes χ_j = −Cov(φ, ℓ_j − L) with ddof = 0).
    """
    L = np.asarray(sampling, dtype=np.float64)
    P = np.asarray(probe, dtype=np.float64)
    if L.ndim < 2 or P.shape[:-1] != L.shape:
        raise ValueError(
            f"sampling must be [..., chains, draws] and probe [..., chains, draws, samples] "
            f"with the same leading axes; got {L.shape} and {P.shape}"
        )
    fL = L if full_sampling is None else np.asarray(full_sampling, dtype=np.float64)
    fP = P if full_probe is None else np.asarray(full_probe, dtype=np.float64)
    lead = L.shape[:-2]
    init = np.asarray(init_loss, dtype=np.float64)
    if init.shape not in (lead, lead + (L.shape[-2],)) and init.shape != fL.shape[:-1]:
        raise ValueError(f"init_loss must be [...] or [..., chains] = {lead}; got {init.shape}")
    init_mean = init if init.shape == lead else init.mean(axis=-1)
    full_delta = fL.mean(axis=(-2, -1))[..., None] - fP.mean(axis=(-3, -2))  # [..., m]
    phi = L - init_mean[..., None, None]  # [..., C, D]
    e_phi = phi.mean(axis=(-2, -1))
    e_phi_l = (phi * L).mean(axis=(-2, -1))
    e_phi_probe = (phi[..., None] * P).mean(axis=(-3, -2))  # [..., m]
    return e_phi_l[..., None] - e_phi_probe - e_phi[..., None] * full_delta

"""Closed-form local learning coefficients of quadratic networks (paper A §4–5, App. C, App. G).

Notation (SPEC §3.4): d input dimension (2p for modular addition), o outputs (p for modular
addition), K hidden units. Every function is pure arithmetic; ``theory_table`` collects them for
one configuration and ``render_theory_table`` draws that table for the CLI.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

UNDER = "under-parametrised"
OVER = "over-parametrised"


def _check_pos(**values: int) -> None:
    """Reject non-positive sizes with a message naming the argument."""
    for name, v in values.items():
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


def identifiable_dim(d: int, outputs: int) -> int:
    """Dimension o·d(d+1)/2 of the identifiable coordinates (Q_1..Q_o), each symmetric d×d."""
    _check_pos(d=d, outputs=outputs)
    return outputs * d * (d + 1) // 2


def unit_directions(d: int, outputs: int) -> int:
    """Directions d + o − 1 one hidden unit adds (one scaling symmetry w→αw, v→α⁻²v per unit)."""
    _check_pos(d=d, outputs=outputs)
    return d + outputs - 1


def quadratic_llc(d: int, outputs: int, width: int) -> tuple[float, str]:
    """Unified v3 formula λ = ½·min(K(d+o−1), o·d(d+1)/2) and which regime binds (Thm 4.1/4.2).

    The regime is ``under-parametrised`` (Thm 4.2 / G.6) when K(d+o−1) ≤ o·d(d+1)/2, otherwise
    ``over-parametrised`` (the identifiable-coordinate cap of Thm 4.1 / G.5).
    """
    _check_pos(width=width)
    under, cap = width * unit_directions(d, outputs), identifiable_dim(d, outputs)
    return (0.5 * under, UNDER) if under <= cap else (0.5 * cap, OVER)


def llc_under(d: int, outputs: int, width: int) -> float:
    """Thm 4.2 (App. G Thm G.6): λ = K(d + o − 1)/2 at generic under-parametrised points."""
    _check_pos(width=width)
    return 0.5 * width * unit_directions(d, outputs)


def llc_over(d: int, outputs: int) -> float:
    """Thm 4.1 (App. G Thm G.5): λ = o·d(d+1)/4 when K ≥ d(d+1)/2 and the features span Sym(d)."""
    return 0.5 * identifiable_dim(d, outputs)


def modular_llc_under(p: int, width: int) -> float:
    """Thm 4.2 for modular addition (d = 2p, o = p): λ = K(3p − 1)/2."""
    return llc_under(2 * p, p, width)


def onehot_llc_under(p: int, width: int) -> float:
    """Thm 4.2 on one-hot pairs (ours): λ = K(3p − 2)/2 = K(d + o − 1)/2 with d = rank X = 2p − 1.

    [e_a; e_b] always has one 1 in each half, so shifting unit j's first-half weights by c and its
    second-half weights by −c leaves every pre-activation W[a] + W[p+b] unchanged: one more
    symmetry per unit than the generic count, so each unit adds 3p − 2 directions, not 3p − 1.
    """
    return llc_under(2 * p - 1, p, width)


def modular_llc_over(p: int) -> float:
    """Thm 4.1 for modular addition (d = 2p, o = p): λ = p²(2p + 1)/2."""
    return llc_over(2 * p, p)


def over_width_threshold(d: int) -> int:
    """Width d(d+1)/2 from which Thm 4.1's spanning assumption can hold."""
    _check_pos(d=d)
    return d * (d + 1) // 2


def effective_width_llc(k_eff: int, d: int, outputs: int) -> float:
    """Thm 5.5: λ = K_eff(d + o − 1)/2, i.e. K_eff(3p − 1)/2 for modular addition."""
    if k_eff < 0:
        raise ValueError(f"k_eff must be >= 0, got {k_eff}")
    return 0.5 * k_eff * unit_directions(d, outputs)


def ntk_llc(rank: int) -> float:
    """Thm 5.1: λ = rank(E[φ(x)φ(x)ᵀ])/2, φ(x) = ∇_θ f(x; θ₀) (the NTK linearisation)."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    return 0.5 * rank


def lazy_llc(outputs: int, width: int, feature_dim: int) -> float:
    """Thm 5.2: λ = (o/2)·min(l, K), l the dimension the random features σ(Xw) can explore."""
    _check_pos(outputs=outputs, width=width)
    return 0.5 * outputs * min(feature_dim, width)


def lazy_bounds_modular(p: int, width: int) -> tuple[float, float]:
    """Cor 5.3 (quadratic σ, modular addition, rank X = 2p − 1): (p/2)·min(K, 2p−1) ≤ λ ≤
    (p/2)·min(K, p(2p−1))."""
    _check_pos(p=p, width=width)
    return 0.5 * p * min(width, 2 * p - 1), 0.5 * p * min(width, p * (2 * p - 1))


def modular_feature_dim(p: int, n_samples: int | None = None) -> int:
    """Dimension l spanned by (xᵀw)² over one-hot pairs: p² on all pairs (min(N, p²) on N of them).

    (W[a] + W[p+b])² = W[a]² + W[p+b]² + 2·W[a]W[p+b]: generic columns span every p×p matrix of
    the pair grid, so l = p², which sits inside Cor 5.3's window [2p − 1, p(2p − 1)].
    """
    _check_pos(p=p)
    full = p * p
    return full if n_samples is None else min(full, n_samples)


def single_output_llc(d: int, width: int) -> tuple[float, str]:
    """App. G.1 (Thm G.1/G.2), one output with biases, f = xᵀAx + bᵀx + c, rank A ≤ K.

    K ≥ d (Thm G.1): λ = (d+1)(d+2)/4; K < d (Thm G.2): λ = ½(Kd − K(K−1)/2 + d + 1).
    """
    _check_pos(d=d, width=width)
    if width >= d:
        return (d + 1) * (d + 2) / 4.0, OVER
    return 0.5 * (width * d - width * (width - 1) / 2 + d + 1), UNDER


def single_output_no_bias_llc(d: int, width: int) -> float:
    """One output, no biases: f = xᵀAx with A = W diag(v) Wᵀ of rank ≤ K (App. G.1 count).

    λ = ½(Kd − K(K−1)/2) for K < d, d(d+1)/4 for K ≥ d. The v3 formula's K(d + o − 1) overcounts
    here: with one output, mixing units inside span(W) keeps A fixed (checked numerically in the
    tests), a symmetry that distinct output rows break when o ≥ 2.
    """
    _check_pos(d=d, width=width)
    if width >= d:
        return d * (d + 1) / 4.0
    return 0.5 * (width * d - width * (width - 1) / 2)


def sgd_temperature(lr: float, n: int, batch: int) -> float:
    """App. C: SGD (step η, batch B of n) samples exp(−nL/T), T = η(n − B)/(2nB); full batch: 0."""
    if n < 1 or lr < 0:
        raise ValueError(f"need n >= 1 and lr >= 0, got n={n}, lr={lr}")
    b = n if batch <= 0 or batch >= n else batch
    return lr * (n - b) / (2.0 * n * b)


def _row(
    name: str, value: float, formula: str, applies: bool, why: str, source: str
) -> dict[str, Any]:
    """One theory-table row."""
    return {
        "name": name,
        "value": value,
        "formula": formula,
        "applies": applies,
        "why": why,
        "source": source,
    }


def modular_data_cap(p: int, outputs: int, n_train: int | None = None) -> float:
    """Data-aware ceiling on λ for one-hot pairs: rank J ≤ o·p² on all p² pairs, so λ ≤ o·p²/2.

    With ``n_train`` it is the training split's centred ceiling o·(N − 1)/2 when that is lower:
    the network is seen only through its outputs on the data (SPEC §3.4, data-aware caveat).
    """
    _check_pos(p=p, outputs=outputs)
    cap = outputs * p * p
    if n_train is not None:
        cap = min(cap, outputs * max(n_train - 1, 0))
    return 0.5 * cap


def theory_table(
    p: int,
    width: int,
    d: int | None = None,
    outputs: int | None = None,
    n_train: int | None = None,
) -> list[dict[str, Any]]:
    """Every closed form of SPEC §3.4 for one configuration, as JSON-ready rows.

    Rows: name, value, formula, applies (bool), why (when/why it applies), source (theorem).
    ``d`` defaults to 2p and ``outputs`` to p (modular addition with one-hot inputs). On modular
    data the unified, under-parametrised and effective-width rows apply only below the data cap
    o·p²/2 (o·(N−1)/2 with ``n_train``): a count above what the data can resolve cannot be the
    LLC of the model on that data.
    """
    d = 2 * p if d is None else d
    o = p if outputs is None else outputs
    _check_pos(p=p, width=width, d=d, outputs=o)
    K, modular = width, (d == 2 * p and o == p)
    k_under = o * d * (d + 1) / (2 * (d + o - 1))
    lam, regime = quadratic_llc(d, o, K)
    n_par = K * (d + o)
    k_over = over_width_threshold(d)
    lo, hi = lazy_bounds_modular(p, K)
    l_full = modular_feature_dim(p)
    ntk_cap = min(int(2 * lam), o * p * p) if modular else int(2 * lam)
    ntk_formula = "min(2λ_v3, o·p²)/2" if modular else "λ_v3"
    tag = " (modular: d = 2p, o = p)" if modular else ""
    cap = modular_data_cap(p, o, n_train) if modular else float("inf")
    cap_text = "o·(N−1)/2" if n_train is not None and 2 * cap < o * p * p else "o·p²/2"
    capped = f"; exceeds the data cap {cap_text} = {cap:,.0f}"
    rows = [
        _row(
            "unified (v3)",
            lam,
            "½·min(K(d+o−1), o·d(d+1)/2)",
            o >= 2 and lam <= cap,
            f"{regime}: generic (non-defective) points"
            + ("" if o >= 2 else "; o = 1: use the single-output rows")
            + (capped if lam > cap else ""),
            "Thm 4.1/4.2 (v3)",
        ),
        _row(
            "under-parametrised",
            llc_under(d, o, K),
            "K(d+o−1)/2" + (" = K(3p−1)/2" if modular else ""),
            regime == UNDER and llc_under(d, o, K) <= cap,
            f"binds when K(d+o−1) ≤ o·d(d+1)/2 (K ≤ {k_under:.1f}){tag}"
            + (capped if llc_under(d, o, K) > cap else ""),
            "Thm 4.2 / G.6",
        ),
        _row(
            "over-parametrised",
            llc_over(d, o),
            "o·d(d+1)/4" + (" = p²(2p+1)/2" if modular else ""),
            K >= k_over,
            f"needs K ≥ d(d+1)/2 = {k_over} and spanning features{tag}",
            "Thm 4.1 / G.5",
        ),
        _row(
            "effective width (K_eff = K)",
            effective_width_llc(K, d, o),
            "K_eff(d+o−1)/2" + (" = K_eff(3p−1)/2" if modular else ""),
            regime == UNDER and effective_width_llc(K, d, o) <= cap,
            "upper end: K_eff ≤ K active units; measure K_eff on a checkpoint"
            + (capped if effective_width_llc(K, d, o) > cap else ""),
            "Thm 5.5",
        ),
        _row(
            "NTK (upper bound)",
            ntk_llc(ntk_cap),
            "rank(E[φφᵀ])/2 ≤ " + ntk_formula,
            False,
            "bound only: the rank needs a checkpoint at init (numeric Jacobian rank)",
            "Thm 5.1",
        ),
        _row(
            "lazy, all pairs",
            lazy_llc(o, K, l_full),
            "(o/2)·min(K, l), l = p² on one-hot pairs",
            modular,
            "W frozen at a generic random init, V the centred ridge fit",
            "Thm 5.2",
        ),
        _row(
            "lazy lower bound",
            lo,
            "(p/2)·min(K, 2p−1)",
            modular,
            "modular addition, σ(z) = z²",
            "Cor 5.3",
        ),
        _row(
            "lazy upper bound",
            hi,
            "(p/2)·min(K, p(2p−1))",
            modular,
            "modular addition, σ(z) = z²",
            "Cor 5.3",
        ),
    ]
    if modular:
        rows.append(
            _row(
                "data-aware cap",
                cap,
                cap_text + " (rank of the output Jacobian on the data)",
                True,
                "ceiling on every count above on one-hot data; the numeric rank(J_c)/2 of a "
                "checkpoint is the honest value",
                "SPEC §3.4 data-aware caveat",
            )
        )
    so, so_regime = single_output_llc(d, K)
    rows.append(
        _row(
            f"single output + biases ({so_regime})",
            so,
            "(d+1)(d+2)/4 if K ≥ d else ½(Kd − K(K−1)/2 + d + 1)",
            o == 1,
            "f = xᵀAx + bᵀx + c, one output, rank A ≤ K",
            "App. G.1, Thm G.1/G.2",
        )
    )
    rows.append(
        _row(
            "single output, no biases",
            single_output_no_bias_llc(d, K),
            "d(d+1)/4 if K ≥ d else ½(Kd − K(K−1)/2)",
            o == 1,
            "f = xᵀAx, one output (the built-in network with o = 1)",
            "App. G.1 count without b, c",
        )
    )
    rows.append(
        _row(
            "regular (parameter count / 2)",
            n_par / 2,
            "K(d+o)/2",
            False,
            "reference: λ of a regular model with the same parameter count",
            "SLT",
        )
    )
    return rows


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"


def render_theory_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    """A rich Table of ``theory_table`` rows for the CLI (`grokbasin theory`)."""
    t = Table(title=title, show_lines=False)
    for col, kw in (
        ("quantity", {}),
        ("λ", {"justify": "right"}),
        ("formula", {}),
        ("applies", {"justify": "center"}),
        ("when", {}),
        ("source", {}),
    ):
        t.add_column(col, **kw)
    for r in rows:
        t.add_row(
            r["name"],
            _fmt(r["value"]),
            r["formula"],
            "yes" if r["applies"] else "no",
            r["why"],
            r["source"],
        )
    return t

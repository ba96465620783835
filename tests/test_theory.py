"""Closed-form LLCs against hand-computed values, and their numeric counterparts.

The numeric Jacobian rank of generic quadratic networks on dense Gaussian inputs checks
Thm 4.1/4.2 (v3 unified formula): rank(J) = 2λ exactly (integer equality).
"""

from __future__ import annotations

import json

import pytest
import torch

from grokbasin import rng
from grokbasin.config import build_config
from grokbasin.theory import closed_form as cf
from grokbasin.theory import numeric as nm
from grokbasin.train.loop import init_params, make_setup


def test_hand_computed_closed_forms():
    # exact arithmetic on small integers / halves: compared with ==
    assert cf.modular_llc_under(23, 256) == 8704.0  # 256·68/2
    assert cf.modular_llc_over(23) == 12431.5  # 23²·47/2
    assert cf.quadratic_llc(4, 2, 2) == (5.0, cf.UNDER)  # ½·min(2·5, 20)
    assert cf.quadratic_llc(4, 2, 12) == (10.0, cf.OVER)  # ½·min(60, 20)
    assert cf.quadratic_llc(46, 23, 256) == (8704.0, cf.UNDER)
    assert cf.over_width_threshold(46) == 1081
    assert cf.effective_width_llc(10, 46, 23) == 340.0  # 10·68/2
    assert cf.ntk_llc(7) == 3.5
    assert cf.lazy_llc(23, 256, 529) == 2944.0  # (23/2)·256
    assert cf.lazy_bounds_modular(23, 256) == (517.5, 2944.0)  # (23/2)·45, (23/2)·256
    assert cf.lazy_bounds_modular(23, 2000) == (517.5, 11902.5)  # upper (23/2)·1035
    assert cf.modular_feature_dim(23) == 529 and cf.modular_feature_dim(23, 211) == 211
    assert cf.single_output_llc(4, 5) == (7.5, cf.OVER)  # 5·6/4
    assert cf.single_output_llc(4, 2) == (6.0, cf.UNDER)  # ½(8 − 1 + 5)
    # T = η(n − B)/(2nB) = 0.1·900/(2·1000·100) = 4.5e-4 (floating point: rel 1e-12)
    assert cf.sgd_temperature(0.1, 1000, 100) == pytest.approx(4.5e-4, rel=1e-12)
    assert cf.sgd_temperature(0.1, 1000, 0) == 0.0 and cf.sgd_temperature(0.1, 1000, 5000) == 0.0


def test_closed_forms_reject_bad_sizes():
    with pytest.raises(ValueError, match="width"):
        cf.quadratic_llc(4, 2, 0)
    with pytest.raises(ValueError):
        cf.effective_width_llc(-1, 4, 2)


def test_theory_table_rows_and_render():
    rows = cf.theory_table(23, 256)
    by = {r["name"]: r for r in rows}
    assert by["unified (v3)"]["value"] == 8704.0 and "under" in by["unified (v3)"]["why"]
    assert by["over-parametrised"]["applies"] is False  # K = 256 < 1081
    assert by["lazy lower bound"]["value"] == 517.5
    json.dumps(rows)  # JSON-ready for `grokbasin theory --json`
    assert cf.render_theory_table(rows).row_count == len(rows)
    over = {r["name"]: r for r in cf.theory_table(2, 12)}  # d = 4, o = 2, K ≥ 10
    assert over["over-parametrised"]["applies"] and over["unified (v3)"]["value"] == 10.0


def _generic(d: int, o: int, K: int, n: int, R: int = 2):
    keys = rng.key(list(range(R)))
    W = rng.normal(rng.fold_in(keys, 1), (d, K)).double()
    V = rng.normal(rng.fold_in(keys, 2), (o, K)).double()
    X = rng.normal(rng.fold_in(keys, 3), (n, d)).double()  # dense Gaussian inputs per replica
    return W, V, X


@pytest.mark.parametrize(
    "d,o,K",
    [(4, 2, 2), (4, 2, 3), (5, 3, 2), (4, 2, 5), (4, 2, 10), (4, 2, 12), (3, 3, 8)],
)
def test_jacobian_rank_equals_twice_closed_form(d, o, K):
    W, V, X = _generic(d, o, K, n=60)  # 60 > d(d+1)/2 samples: x ↦ xᵀQx is injective
    res = nm.quadratic_jacobian_rank(W, V, X, centred=False)
    lam, _ = cf.quadratic_llc(d, o, K)
    assert res.rank.tolist() == [int(2 * lam)] * 2  # integer equality per replica
    assert bool((res.gap > 1e3).all())  # a clear spectral gap at the cut (≥ 3 decades)


def test_single_output_without_biases_loses_rotations():
    # o = 1: f = xᵀ W diag(v) Wᵀ x is a rank-K symmetric matrix, dim Kd − K(K−1)/2 (App. G.1
    # count without the d + 1 bias terms): below the v3 formula K·d, which assumes o ≥ 2.
    W, V, X = _generic(6, 1, 3, n=60)
    assert nm.quadratic_jacobian_rank(W, V, X, centred=False).rank.tolist() == [15, 15]
    assert cf.single_output_no_bias_llc(6, 3) == 7.5  # ½(18 − 3)
    W, V, X = _generic(3, 1, 5, n=40)  # K ≥ d: all of Sym(3), rank 6
    assert nm.quadratic_jacobian_rank(W, V, X, centred=False).rank.tolist() == [6, 6]
    assert cf.single_output_no_bias_llc(3, 5) == 3.0


def test_gram_matches_explicit_jacobian():
    W, V, X = _generic(4, 3, 5, n=12)
    J = nm.quadratic_jacobian(W, V, X)
    Jc = (J - J.mean(dim=1, keepdim=True)).reshape(2, 36, -1)
    G = nm.quadratic_gram(W, V, X, centred=True)
    # float64 sums of ~100 terms of size ≤ ~1e3: 1e-9 relative is ample
    assert torch.allclose(G, Jc @ Jc.transpose(1, 2), rtol=1e-9, atol=1e-9)
    assert (
        nm.jacobian_rank_from_jacobian(J).rank.tolist()
        == nm.rank_from_gram(G, (36, 35)).rank.tolist()
    )


def _modular(p: int, K: int, seeds=(0, 1)):
    cfg = build_config(
        {}, {"task.p": p, "model.width": K, "train.seeds": list(seeds), "train.batch_size": 0}
    )
    s = make_setup(cfg)
    return s, init_params(s)


def test_generic_jacobian_matches_analytic_on_builtin_model():
    s, params = _modular(5, 6)
    tokens = s.task.x[s.task.train_idx]  # per-replica training splits [R, N, 2]
    Jg = nm.generic_jacobian(s.model.forward, params, tokens)
    Ja = nm.quadratic_jacobian(params["W"], params["V"], nm.onehot_inputs(tokens, 5))
    assert torch.allclose(Jg.double(), Ja, atol=1e-5)  # float32 forward vs float64: 1e-5 abs


@pytest.mark.parametrize("K", [5, 20, 60])
def test_lazy_rank_within_cor53_bounds(K):
    p = 7
    s, params = _modular(p, K)
    res = nm.lazy_feature_rank(params["W"], nm.onehot_inputs(s.task.x, p))
    lo, hi = cf.lazy_bounds_modular(p, K)
    for r in res.rank.tolist():
        assert lo <= 0.5 * p * r <= hi
        assert r == min(K, cf.modular_feature_dim(p))  # l = p² on all pairs (integer equality)


def test_onehot_training_rank_bounded_by_data():
    p, K = 5, 30
    s, params = _modular(p, K)
    rows = nm.modular_numeric(params, s.task)
    n = s.task.n_train
    for row in rows:
        assert row["train_rank"] <= p * (n - 1)  # centred training Jacobian: ≤ p·(N−1)
        assert row["full_rank"] <= p * (p * p - 1)
        assert row["llc_train"] == row["train_rank"] / 2
        assert row["k_eff"] == K and row["lazy_rank"] == min(K, p * p)


def test_rank_threshold_and_gap():
    sv = torch.tensor([[1.0, 1e-3, 1e-12], [2.0, 2.0, 2.0]], dtype=torch.float64)
    res = nm.rank_from_singular_values(sv, (3, 3))
    assert res.rank.tolist() == [2, 3]
    assert res.gap[0].item() == pytest.approx(1e9, rel=1e-9)  # 1e-3 / 1e-12
    assert torch.isinf(res.gap[1])  # full rank: nothing dropped
    assert res.profile[0].tolist() == [1, 1, 1, 2, 2]  # s_i > s_max·{1e-1..1e-5}, strict
    assert res.as_dicts()[0]["rank_rel_1e-04"] == 2


def test_effective_width_relative_and_absolute():
    V = torch.zeros(1, 2, 4)
    V[0, 0, :] = torch.tensor([1.0, 0.5, 1e-3, 0.0])
    assert nm.effective_width(V).tolist() == [2]  # τ = 1% of the largest norm = 0.01
    assert nm.effective_width(V, tau=1e-4).tolist() == [3]


def test_tian_quantities_by_hand():
    # X = I₂, W = I₂ → F = σ(XW) = I₂; V = I₂; Y = [[1, 0], [0, 0]].
    X, W, V = torch.eye(2), torch.eye(2)[None], torch.eye(2)[None]
    Y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # Y − F Vᵀ = [[0, 0], [0, −1]]; centred over samples: [[0, .5], [0, −.5]]; times V = same
    G = nm.tian_backprop_gradient(W, V, X, Y)
    assert torch.allclose(G[0], torch.tensor([[0.0, 0.5], [0.0, -0.5]], dtype=torch.float64))
    # Ỹ = [[.5, 0], [−.5, 0]]; Ỹᵀ F[:, 0] = (.5, 0) → E = .125; Ỹᵀ F[:, 1] = (−.5, 0) → .125
    assert torch.allclose(
        nm.unit_energy(W, X, Y)[0], torch.tensor([0.125, 0.125], dtype=torch.float64)
    )


def test_run_numeric_stacks_checkpoints(tmp_path):
    from grokbasin.train.runner import train

    cfg = build_config(
        {},
        {
            "task.p": 5,
            "model.width": 8,
            "train.epochs": 20,
            "train.checkpoint_every": 10,
            "train.batch_size": 0,
            "train.seeds": [0, 1],
        },
    )
    run = train(cfg, tmp_path, progress=False).run
    rows = nm.run_numeric(run, [0, 20], full=False)
    assert [(r["epoch"], r["replica"], r["seed"]) for r in rows] == [
        (0, 0, 0),
        (0, 1, 1),
        (20, 0, 0),
        (20, 1, 1),
    ]
    one = nm.run_numeric(run, 20, full=False)
    assert [r["train_rank"] for r in one] == [r["train_rank"] for r in rows[2:]]  # integer equality
    assert all(r["train_rank"] <= 5 * (cfg.task.n_train - 1) for r in rows)


def test_theory_table_applies_the_data_cap():
    # p = 53, K = 1024: K(3p−1)/2 = 80,896 > o·p²/2 = 53·2809/2 = 74,438.5 (exact arithmetic)
    by = {r["name"]: r for r in cf.theory_table(53, 1024)}
    assert by["data-aware cap"]["value"] == 74438.5
    for name in ("unified (v3)", "under-parametrised", "effective width (K_eff = K)"):
        assert by[name]["value"] == 80896.0
        assert by[name]["applies"] is False and "data cap" in by[name]["why"]
    # p = 23, K = 128: 128·68/2 = 4352 ≤ 23·529/2 = 6083.5 on all pairs, so the rows apply ...
    ok = {r["name"]: r for r in cf.theory_table(23, 128)}
    assert ok["under-parametrised"]["applies"] and ok["effective width (K_eff = K)"]["applies"]
    # ... but not on the training split (N = 211): the centred cap 23·210/2 = 2415 < 4352
    tr = {r["name"]: r for r in cf.theory_table(23, 128, n_train=211)}
    assert tr["data-aware cap"]["value"] == 2415.0 and not tr["under-parametrised"]["applies"]
    assert cf.modular_data_cap(53, 53, 1123) == 29733.0  # 53·1122/2

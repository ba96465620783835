"""Our SGLD estimator on paper B's families against their theory, on small instances.

Settings are chosen so that the localised posterior resolves every identifiable direction
(large nβ, small ε, γ = 1, full batch); under them λ̂ should sit near theory. The paper-scale
settings (nβ = n/ln n) give lower values by design, which the experiments report.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grokbasin import rng
from grokbasin.experiments.paper_b.engine import collect, run_all
from grokbasin.experiments.paper_b.spec import expand_grid
from grokbasin.models import regression as MR
from grokbasin.tasks import regression as TR
from grokbasin.theory import paper_b as TH
from grokbasin.theory.rrr import rrr_learning_coefficient
from grokbasin.train.generic import fit


def _sampler(kw, chains):
    return {
        "step_size": kw["step_size"],
        "gamma": kw["gamma"],
        "nbeta": kw["nbetas"][0],
        "burnin": kw["burnin"],
        "draws": kw["draws"],
        "chains": chains,
    }


def polynomial_llcs(degrees, widths, repeats, chains, n, sampler, root):
    """λ̂ per (degree, c, repeat) at the least-squares fit, through the paper-B run engine."""
    base = {
        "task": {"name": "polynomial", "n": n, "true_degree": 3, "noise": 0.1},
        "model": {"name": "polynomial", "size": 1},
        "llc": _sampler(sampler, chains),
    }
    points = [{"model.size": d, "task.c": c} for c in widths for d in degrees]
    cfgs = expand_grid({"base": base, "points": points, "seeds": list(range(repeats))})
    run_all(cfgs, root)
    return [r | {"degree": r["size"]} for r in collect(cfgs, root)]


def low_rank_llcs(d, ranks, chains, n, sampler, root):
    """λ̂ of W₂W₁ at the balanced SVD factors of a rank-r truth, through the run engine."""
    base = {
        "task": {"name": "low_rank", "n": n, "d": d, "noise": 0.0},
        "model": {"name": "low_rank", "size": 1},
        "llc": _sampler(sampler, chains),
    }
    cfgs = expand_grid({"base": base, "points": [{"model.size": r} for r in ranks]})
    run_all(cfgs, root)
    rows = collect(cfgs, root)
    return [
        r | {"theory": TH.low_rank_llc(d, r["size"]), "theory_aw": _aw(d, r["size"])} for r in rows
    ]


def _aw(d, r):
    return rrr_learning_coefficient(d, d, r, r)[0]


def test_polynomial_estimate_within_20pct_of_theory_on_wide_domain(tmp_path):
    # degree 1..3 on [-1, 1], N = 200, nβ = 1000, ε = 1e-4, γ = 1, 4 chains, 1000 + 2000 steps:
    # mean over chains within 20% of (d + 1)/2. The flattest Gram direction of degree 3 relaxes
    # in ~1000 steps at this ε: with 300 + 900 steps degree 3 gave 1.56-1.9 over seeds 0-2 (and
    # passed only for the old data seeds); with 1000 + 2000 it gives 1.70-2.02
    kw = {"step_size": 1e-4, "gamma": 1.0, "burnin": 1000, "draws": 2000, "nbetas": [1000.0]}
    rows = polynomial_llcs([1, 2, 3], [1.0], repeats=1, chains=4, n=200, sampler=kw, root=tmp_path)
    for r in rows:
        assert r["llc"] == pytest.approx(TH.polynomial_llc(r["degree"]), rel=0.2), r


def test_polynomial_estimate_far_below_theory_at_high_degree_narrow_domain(tmp_path):
    # degree 24 on [-0.5, 0.5]: the Gram spectrum decays so fast that at nβ = n/ln n most of the
    # 25 directions are unresolved; λ̂ is below half of (d+1)/2 = 12.5 (the paper's observation)
    nb = 200 / np.log(200)
    kw = {"step_size": 1e-3, "gamma": 1.0, "burnin": 200, "draws": 600, "nbetas": [nb]}
    rows = polynomial_llcs([24], [0.5], repeats=1, chains=2, n=200, sampler=kw, root=tmp_path)
    assert 0 < rows[0]["llc"] < 0.5 * TH.polynomial_llc(24)


def test_low_rank_estimate_within_20pct_of_theory(tmp_path):
    # d = 3, ranks 1..3 (rank-matched truth, noiseless), N = 200, nβ = 1000, ε = 1e-4, γ = 1,
    # 2 chains, 300 + 900 steps: within 20% of r(2d − r)/2 = 2.5, 4, 4.5
    kw = {"step_size": 1e-4, "gamma": 1.0, "burnin": 300, "draws": 900, "nbetas": [1000.0]}
    rows = low_rank_llcs(3, [1, 2, 3], chains=2, n=200, sampler=kw, root=tmp_path)
    for r in rows:
        assert r["llc"] == pytest.approx(r["theory"], rel=0.2), r
        assert r["theory_aw"] == r["theory"]  # Aoyagi–Watanabe reduces to r(2d − r)/2 here


@pytest.mark.parametrize("d", [3, 7, 100])
def test_rank_matched_theory_equals_aoyagi_watanabe(d):
    # exact equality for every rank (M = N = d, H = r0 = r)
    for r in range(1, d + 1):
        assert rrr_learning_coefficient(d, d, r, r)[0] == TH.low_rank_llc(d, r)


def test_masked_padding_does_not_change_a_replica():
    # a rank-1 replica padded to rank 3 gives the same outputs as an unpadded rank-1 model (1e-6)
    keys = rng.key([5])
    data = TR.low_rank_linear(keys, 4, 1, 50)
    p = MR.lowrank_init(keys, 4, 4, 3)
    mask = MR.size_mask([1])
    padded = MR.lowrank_forward(p, data.x, torch.cat([mask, torch.zeros(1, 2)], 1))
    small = MR.lowrank_forward({"W1": p["W1"][:, :1], "W2": p["W2"][:, :, :1]}, data.x)
    assert torch.allclose(padded, small, atol=1e-6)


def test_generic_trainer_replica_independent_and_learns():
    # training replicas 0,1 together equals training replica 1 alone (1e-5); the loss falls ≥ 10×
    keys = rng.key([0, 1])
    data = TR.low_rank_autoencoder(keys, 6, [1, 2], 64)
    mask = MR.size_mask([1, 2])

    def run(sel):
        p = {k: v[sel] for k, v in MR.autoencoder_init(keys, 6, 2, width=16).items()}
        return fit(
            lambda q, x: MR.autoencoder_forward(q, x, mask[sel]),
            p,
            data.x[sel],
            data.y[sel],
            MR.mse,
            keys[sel],
            steps=300,
            batch_size=16,
            optimizer="adam",
            lr=1e-2,
            log_every=100,
        )

    both, one = run(slice(0, 2)), run(slice(1, 2))
    assert torch.allclose(both.losses[1:], one.losses, rtol=1e-5, atol=1e-7)
    assert float(both.losses[1, -1]) < 0.1 * float(both.losses[1, 0])

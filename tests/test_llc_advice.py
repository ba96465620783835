"""Health flags grouped by kind with advice that names the next command and its setting."""

from __future__ import annotations

import json

from grokbasin.llc.advice import advice_lines, group_flags, severity

SAMPLER = json.dumps({"chains": 4, "draws": 400, "burnin": 200, "step_size": 1e-3, "gamma": 5.0})


def _rows(flags_by_epoch: dict[int, str], replicas=(0,), chains: int = 2) -> list[dict]:
    return [
        {
            "epoch": e,
            "replica": r,
            "chain": c,
            "nbeta": 26.4,
            "flags": f,
            "sampler_config": SAMPLER,
        }
        for e, f in flags_by_epoch.items()
        for r in replicas
        for c in range(chains)
    ]


def test_one_line_per_flag_kind_with_counts_and_commands():
    rows = _rows({0: "nonstationary", 10: "nonstationary,rhat", 20: "low_ess", 30: ""})
    lines = advice_lines(rows, "runs/abc")
    assert len(lines) == 3  # not one per checkpoint
    stat, rhat, ess = lines  # most serious first: nonstationary, rhat, low_ess
    assert (
        stat.startswith("chains not stationary") and "at 2 of 4 checkpoints (epochs 0, 10)" in stat
    )
    assert "`grokbasin llc estimate runs/abc --burnin 800`" in stat  # 4 × burn-in 200
    assert "`grokbasin llc calibrate runs/abc`" in stat
    assert "at 1 of 4 checkpoints (epoch 10)" in rhat
    assert "`grokbasin llc estimate runs/abc --chains 8 --draws 800`" in rhat  # doubled
    assert "`grokbasin llc estimate runs/abc --draws 1600`" in ess


def test_divergence_comes_first_and_suggests_a_tenth_of_the_step():
    rows = _rows({0: "low_ess", 5: "nonfinite,low_ess"})
    groups = group_flags(rows, "R")
    assert [g.flag for g in groups] == ["nonfinite", "low_ess"]
    assert "--step-size 0.0001" in groups[0].line and groups[0].checkpoints == ((0, 5),)
    assert groups[1].total == 2 and len(groups[1].checkpoints) == 2


def test_many_checkpoints_are_abbreviated_and_replicas_named():
    rows = _rows({e: "rhat" for e in range(0, 200, 10)}, replicas=(0, 1), chains=1)
    (line,) = advice_lines(rows)
    assert "at 40 of 40 checkpoints" in line and "… (40 in all)" in line
    assert "0 (replica 0), 0 (replica 1), 10 (replica 0)" in line


def test_defaults_without_sampler_config_and_unknown_flags():
    rows = [{"epoch": 1, "replica": 0, "flags": "rhat,weird"}]
    rhat, weird = advice_lines(rows)
    assert "--chains 8 --draws 800" in rhat  # LLCConfig defaults: 4 chains, 400 draws
    assert "flag 'weird'" in weird
    assert advice_lines([{"epoch": 1, "flags": ""}]) == []


def test_low_ess_asks_for_enough_draws():
    rows = _rows({0: "low_ess", 10: "low_ess", 20: "low_ess"})
    for r, ess in zip(rows, [20, 20, 30, 30, 40, 40], strict=True):
        r["ess"] = ess
    (line,) = advice_lines(rows, "R")
    assert "--draws 1600" in line  # median ESS 30 -> 100/30 -> 4 × 400 draws
    for r in rows:
        r["ess"] = 90.0
    assert "--draws 800" in advice_lines(rows, "R")[0]  # at least twice
    for r in rows:
        r["ess"] = 1.0
    assert "--draws 4000" in advice_lines(rows, "R")[0]  # at most ten times


def test_severity_orders_checkpoints():
    assert severity([]) == float("inf")
    assert severity(["nonfinite"]) < severity(["rhat", "low_ess"]) < severity(["low_ess"])

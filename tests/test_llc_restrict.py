"""Weight-restricted LLC: the mask helper, known answers (regular regression split 4 + 6, the
quadratic net's V at the lazy point), batched = alone, the llc.parquet column, old files, CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import grokbasin.llc as gl
from grokbasin.config import LLCConfig, build_config
from grokbasin.errors import ConfigError
from grokbasin.llc import laplace as lp
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.restrict import (
    module_heads,
    param_masks,
    replica_masks,
    restriction_masks,
    transformer_heads,
)
from grokbasin.llc.targets import from_modular
from grokbasin.llc.trajectory import estimate_runs
from grokbasin.restrictions import parse_flags
from grokbasin.store import llc_results, query
from grokbasin.store.rundir import RunDir, read_parquet, write_parquet
from grokbasin.theory import basins
from grokbasin.train.loop import make_setup

# ------------------------------------------------------------------ the pure helper


def test_globs_select_whole_parameters_and_unknown_patterns_name_what_exists() -> None:
    shapes = {"W": (4, 3), "V": (2, 3), "L0.b": (5,)}
    m = param_masks(shapes, ["W", "L?.*"])
    assert bool(m["W"].all()) and bool(m["L0.b"].all()) and not bool(m["V"].any())
    with pytest.raises(ConfigError, match=r"pattern 'X\*' of restriction 'r' matches no "
                       r"parameter; the parameters are \['L0.b', 'V', 'W'\]"):  # fmt: skip
        param_masks(shapes, ["W", "X*"], name="r")


def test_head_pattern_selects_exactly_that_heads_slice() -> None:
    # transformer layout: Wqkv [D, 3D] columns (q|k|v, head, dh); Wo [D, D] rows (head, dh)
    D, H = 8, 2
    shapes = {"L0.Wqkv": (D, 3 * D), "L0.bqkv": (3 * D,), "L0.Wo": (D, D), "L0.W1": (D, 4)}
    heads = transformer_heads(list(shapes), H)
    m = param_masks(shapes, ["L0.*#head=1"], heads)
    cols = [j * D + 4 + d for j in range(3) for d in range(4)]  # head 1 of q, k, v
    want = torch.zeros(3 * D, dtype=torch.bool)
    want[cols] = True
    assert torch.equal(m["L0.Wqkv"], want.expand(D, -1)) and torch.equal(m["L0.bqkv"], want)
    assert torch.equal(m["L0.Wo"][4:], torch.ones(4, D, dtype=torch.bool))
    assert not bool(m["L0.Wo"][:4].any()) and not bool(m["L0.W1"].any())
    with pytest.raises(ConfigError, match="head 2 does not exist"):
        param_masks(shapes, ["L0.Wo#head=2"], heads)
    with pytest.raises(ConfigError, match="matches no attention weights"):
        param_masks(shapes, ["L0.W1#head=0"], heads)


def test_module_heads_follow_multihead_attention_packing() -> None:
    # nn.MultiheadAttention(8, 2): in_proj_weight [24, 8] rows (q|k|v, head, dh)
    mha = torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2))
    shapes = {k: tuple(v.shape) for k, v in mha.named_parameters()}
    m = param_masks(shapes, ["*#head=0"], module_heads(mha))
    rows = [j * 8 + d for j in range(3) for d in range(4)]
    assert m["0.in_proj_weight"][:, 0].nonzero().flatten().tolist() == rows
    assert m["0.out_proj.weight"][0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert not bool(m["0.out_proj.bias"].any())


def test_replica_masks_gather_each_replicas_variant() -> None:
    shapes = {"W": (2,), "V": (3,)}
    per = restriction_masks(shapes, {"W": ["W"], "V": ["V"]})
    m = replica_masks(shapes, [None, per["W"], per["V"]], torch.tensor([0, 1, 2, 1]))
    assert m["W"].tolist() == [[1, 1], [1, 1], [0, 0], [1, 1]]
    assert m["V"].tolist() == [[1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize(
    ("flag", "needle"),
    [("W", "use NAME=PATTERN"), ("=W", "use NAME=PATTERN"), ("W=", "use NAME=PATTERN"),
     ("a b=W", "restriction name 'a b'"), ("W=A,", "use NAME=PATTERN")],
)  # fmt: skip
def test_bad_flags_are_one_line_config_errors(flag: str, needle: str) -> None:
    with pytest.raises(ConfigError, match="--restrict") as e:
        parse_flags([flag])
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert parse_flags(["W=W", "h=L0.*#head=1,E"]) == {"W": ["W"], "h": ["L0.*#head=1", "E"]}


def test_hashes_unrestricted_unchanged_and_one_per_restriction() -> None:
    plain = LLCConfig()
    both = LLCConfig(restrict={"W": ["W"], "V": ["V"]})
    assert both.sampler_hash() == plain.sampler_hash()  # the pinned hashes stay
    assert "restrict" not in plain.model_dump()  # config files of unrestricted runs unchanged
    (_, h0), (_, hw), (_, hv) = both.variants()
    assert h0 == plain.sampler_hash() and len({h0, hw, hv}) == 3
    assert LLCConfig(restrict={"W": ["W", "V"]}).restriction_hash("W") != hw  # patterns count


# ------------------------------------------------------------------ known answers


class _Split(torch.nn.Module):
    """y = x[:4]·a + x[4:]·b: a regular model with d = 4 + 6 weights in two parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(4))
        self.b = torch.nn.Parameter(torch.zeros(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :4] @ self.a + x[:, 4:] @ self.b


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (pred - y).square().mean()


def test_regular_regression_split_4_6_gives_2_and_3_in_one_call() -> None:
    # well-specified Gaussian data, n = 2000, w* = OLS; nβ = n/ln n ≈ 263, curvature ≈ 1,
    # ε = 3e-4 (ε·nβ·μ ≈ 0.08: ≈2% bias, mixing ≈ 25 steps), minibatches of 500, 32 chains.
    # Tolerance 10% of d_restricted/2 (as the unrestricted test); MC error ≈ 4%.
    # Measured: a 2.10, b 3.10, all weights 5.19. w* is solved in float64: a float32 lstsq
    # differs in its last bits from run to run, and the external run's chain streams come from
    # a hash of the checkpoint's bytes, so each run would sample other streams.
    g = torch.Generator().manual_seed(1)
    n = 2000
    X = torch.randn(n, 10, generator=g)
    Y = X @ torch.randn(10, generator=g) + torch.randn(n, generator=g)
    w = torch.linalg.lstsq(X.double(), Y[:, None].double()).solution[:, 0].float()
    res = gl.trajectory(
        _Split(), [{"a": w[:4].clone(), "b": w[4:].clone()}], _mse, (X, Y),
        chains=32, nbeta=n / math.log(n), step_size=3e-4, gamma=1.0, burnin=100, draws=300,
        batch_size=500, restrict={"a": ["a"], "b": ["b"]},
    )  # fmt: skip
    got = {r.get("restriction"): r["llc_mean"] for r in res.summary()}
    assert got["a"] == pytest.approx(2.0, rel=0.10)
    assert got["b"] == pytest.approx(3.0, rel=0.10)
    assert got[None] == pytest.approx(5.0, rel=0.10)
    assert res.restricted == {"a": [0], "b": [0]}
    assert {r["restriction"] for r in res.to_pylist()} == {None, "a", "b"}


def test_quadratic_net_restricted_to_v_at_the_lazy_point_matches_the_lazy_formula() -> None:
    # The lazy point (W at init, V the ridge fit): with W fixed the loss is exactly quadratic in
    # V, so λ̂ restricted to V is the localised Laplace value of F_c's spectrum (×p outputs) at
    # the same (nβ, γ), whose γ → 0 limit is the lazy formula (p/2)·min(N − 1, K). Restriction
    # by mask, batched with the unrestricted estimate in one call. p = 7, K = 20, full batch,
    # 16 chains × 1000 steps, ε·nβ·μ_max = 0.03, γ = 0.1·nβ·μ_max; tolerance 10% (as the
    # names=['V'] test in test_basins).
    p, K, C = 7, 20, 16
    over = {"task.p": p, "task.frac": 0.4, "task.data_seed": 0, "model.width": K,
            "train.seeds": [0], "train.batch_size": 0}  # fmt: skip
    cfg = build_config({}, over)
    params, _ = basins.lazy_basin(cfg)
    task = make_setup(cfg).task
    F = basins.features(params["W"][:1], task.x[task.train_idx[0]])[0]
    sv = torch.linalg.svdvals(F - F.mean(dim=0)).pow(2).numpy() / task.n_train
    mu = np.repeat(sv[sv > sv.max() * 1e-10], p)
    assert len(mu) / 2 == p / 2 * min(task.n_train - 1, K)  # the lazy formula's count
    nb, mu_max = 1e3, float(mu.max())
    eps, gamma = 0.03 / (nb * mu_max), 0.1 * nb * mu_max
    shapes = {k: tuple(v.shape[1:]) for k, v in params.items()}
    per = restriction_masks(shapes, {"V": ["V"]})
    which = torch.tensor([0, 1]).repeat_interleave(C)  # group 0: all weights, group 1: V only
    masks = replica_masks(shapes, [None, per["V"]], which)
    p0 = {k: v.repeat(2 * C, 1, 1) for k, v in params.items()}
    target = from_modular(cfg, p0, task.train_idx.repeat(2 * C, 1), task.n_train, masks=masks)
    est = estimate_llc(target, groups=2, chains=C, nbetas=[nb], step_size=eps, gamma=gamma,
                       burnin=500, draws=500, group_ids=[[0], [0]], diagnose=False)  # fmt: skip
    got = float(est.llc_mean[1, 0])
    assert got == pytest.approx(float(lp.laplace_llc(mu, nb, gamma)), rel=0.10)
    assert float(lp.laplace_llc(mu, nb, 1e-9)) == pytest.approx(len(mu) / 2, rel=1e-6)
    # (group 0, all weights, diverges at this ε: W's curvature is far above V's μ_max; its
    # chains freeze and do not touch group 1's, which is the point of one replica per variant)


def test_fused_masked_kernel_matches_the_reference_update() -> None:
    # the fused SGLD with masks vs the reference update: draw losses equal to float32 rounding
    # (rel 1e-4 over 50 steps); masked entries exactly at w* on every shard: test_llc_sharding
    from grokbasin.llc.estimate import chain_keys, sample
    from grokbasin.llc.samplers import make_hyper

    cfg = build_config(
        {}, {"task.p": 7, "model.width": 6, "train.seeds": [0], "train.batch_size": 0}
    )
    params, _ = basins.lazy_basin(cfg)
    task = make_setup(cfg).task
    R = 4
    shapes = {k: tuple(v.shape[1:]) for k, v in params.items()}
    per = restriction_masks(shapes, {"V": ["V"], "W": ["W"]})
    masks = replica_masks(shapes, [None, per["V"], per["W"], per["V"]], torch.arange(R))
    p0 = {k: v.repeat(R, 1, 1) for k, v in params.items()}
    target = from_modular(cfg, p0, task.train_idx.repeat(R, 1), 8, masks=masks)
    h = make_hyper(R, 1e-4, 30.0, 5.0)
    keys = chain_keys(0, [[g] for g in range(R)], 1, 1)
    fused, ref = (sample(target, h, keys, 10, 40, fused=f, cpu_workers=1) for f in (True, False))
    np.testing.assert_allclose(fused.traces, ref.traces, rtol=1e-4)
    assert not np.array_equal(fused.traces[1], fused.traces[2])  # V-only and W-only differ


# ------------------------------------------------------------------ built-in runs


def _llc(**kw) -> LLCConfig:
    base = dict(chains=2, burnin=5, draws=20, batch_size=16, step_size=1e-4, gamma=5.0)
    return LLCConfig(**{**base, **kw})


@pytest.fixture
def copies(trained_pair, tmp_path):
    """Three fresh copies of one tiny trained run (p = 11, checkpoints 0, 20, 40, 60)."""
    root, runs = trained_pair
    out = []
    for i in range(3):
        shutil.copytree(runs[0].path, tmp_path / str(i) / runs[0].path.name)
        out.append(RunDir(tmp_path / str(i) / runs[0].path.name))
    return out


def _by_key(run: RunDir) -> dict[tuple, float]:
    return {
        (r["restriction"], r["epoch"], r["replica"], r["chain"]): r["llc"]
        for r in read_parquet(run.llc).to_pylist()
    }


def test_batched_restrictions_equal_each_restriction_alone(copies) -> None:
    # replica independence: a restriction's numbers do not depend on what shares its call, and
    # the unrestricted rows of a restricted call are a plain call's (all exact equality: the
    # fused kernel with all-ones masks multiplies by 1 and adds 0)
    both, alone, plain = copies
    out = estimate_runs([both.path], _llc(restrict={"W": ["W"], "V": ["V"]}), progress=False)[0]
    assert out.computed == [0, 20, 40, 60] and out.restricted == {"W": [0, 20, 40, 60],
                                                                  "V": [0, 20, 40, 60]}  # fmt: skip
    estimate_runs([alone.path], _llc(restrict={"W": ["W"]}), progress=False)
    estimate_runs([alone.path], _llc(restrict={"V": ["V"]}), progress=False)
    estimate_runs([plain.path], _llc(), progress=False)
    b, a, u = _by_key(both), _by_key(alone), _by_key(plain)
    assert len(b) == 3 * 4 * 2 and b.keys() == a.keys()
    for k, v in b.items():
        if k[0] is not None:
            assert v == a[k]
        else:
            assert v == u[k]
    assert any(b[k] != b[(None, *k[1:])] for k in b if k[0] == "W")  # restrictions differ


def test_rows_hash_resume_traces_and_unrestricted_newest_hash(copies) -> None:
    run = copies[0]
    cfg = _llc(restrict={"W": ["W"]})
    estimate_runs([run.path], cfg, progress=False)
    rows = read_parquet(run.llc).to_pylist()
    assert {(r["restriction"], r["sampler_hash"]) for r in rows} == {
        (None, cfg.sampler_hash()),
        ("W", cfg.restriction_hash("W")),
    }
    w = next(r for r in rows if r["restriction"] == "W")
    assert json.loads(w["sampler_config"])["restriction"] == {"name": "W", "patterns": ["W"]}
    assert (run.path / "llc_traces" / f"{cfg.restriction_hash('W')}.safetensors").exists()
    again = estimate_runs([run.path], cfg, progress=False)[0]
    assert again.computed == [] and again.restricted == {"W": []}
    more = estimate_runs([run.path], _llc(restrict={"W": ["W"], "V": ["V"]}), progress=False)[0]
    assert more.computed == [] and more.restricted == {"W": [], "V": [0, 20, 40, 60]}
    # readers that take 'the newest estimate' still get the unrestricted one
    newest = query.llc_rows([query.Want(run.path, None, "any")])[0]
    assert {r["sampler_hash"] for r in newest} == {cfg.sampler_hash()}
    found = query.restriction_hashes(run.path, cfg)
    assert found == {"V": (more_hash := _llc(restrict={"V": ["V"]}).restriction_hash("V"),
                           ["V"]), "W": (cfg.restriction_hash("W"), ["W"])}  # fmt: skip
    assert more_hash != cfg.sampler_hash()
    summary = llc_results.llc_summary(read_parquet(run.llc).to_pylist())
    assert {s.get("restriction") for s in summary} == {None, "W", "V"}


def test_old_files_without_the_column_still_read_and_merge(copies) -> None:
    run = copies[0]
    estimate_runs([run.path], _llc(), progress=False)
    t = read_parquet(run.llc)
    write_parquet(run.llc, t.drop(["restriction"]))  # a file written before the column
    assert "restriction" not in read_parquet(run.llc).column_names
    assert len(query.llc_rows([query.Want(run.path, None, "any")])[0]) == t.num_rows
    assert query.restriction_hashes(run.path, _llc()) == {}
    estimate_runs([run.path], _llc(restrict={"V": ["V"]}), progress=False)
    merged = read_parquet(run.llc).to_pylist()
    assert sum(r["restriction"] is None for r in merged) == t.num_rows
    assert sum(r["restriction"] == "V" for r in merged) == t.num_rows


# ------------------------------------------------------------------ CLI


def test_cli_restrict_round_trip_resume_and_bad_specs(copies, run_cli, refused, tmp_path) -> None:
    run = copies[0]
    fast = ["--chains", "2", "--draws", "20", "--burnin", "5", "--llc-batch-size", "16",
            "--quiet"]  # fmt: skip
    bad_specs = [
        ("W", "--restrict: got 'W'"),
        ("=W", "--restrict: got '=W'"),
        ("X=nope*", "pattern 'nope*' of restriction 'X' matches no parameter"),
    ]
    for bad, needle in bad_specs:
        refused(["llc", "estimate", str(run.path), "--restrict", bad, *fast], tmp_path, needle)
        assert not run.llc.exists()  # nothing written
    args = ["llc", "estimate", str(run.path), "--restrict", "W=W", "--restrict", "V=V", *fast]
    rc, out, err = run_cli(args, tmp_path)
    assert rc == 0, err
    assert "LLC restricted to W: 4 checkpoints sampled" in out + err
    rows = read_parquet(run.llc).to_pylist()
    assert sorted({r["restriction"] or "" for r in rows}) == ["", "V", "W"]
    rc, out, err = run_cli(args, tmp_path)
    assert rc == 0 and "0 checkpoints sampled, 4 already estimated" in out + err
    assert "LLC restricted to V: 0 checkpoints sampled" in out + err
    assert read_parquet(run.llc).num_rows == len(rows)
    assert "restrict" not in (run.config.read_text())  # per call, never recorded as sticky
    assert (run.figures / "trajectory.png").exists()
    from grokbasin.pipeline import restricted_arrays, stored_config

    cfg = stored_config(run)  # the run's sampler: the report draws its restrictions
    drawn = restricted_arrays(run, cfg.llc, cfg.llc.resolve_nbeta(cfg.task.n_train), [0])
    assert sorted(drawn[0]) == ["V", "W"] and drawn[0]["W"]["llc"].shape == (4, 2)


def test_transformer_heads_in_one_call(tmp_path) -> None:
    # per-head restrictions of the built-in transformer: rows per head, finite; a head that
    # does not exist is a one-line error naming it
    from grokbasin.train.runner import train

    over = {"task.p": 7, "task.frac": 0.6, "model.name": "transformer", "model.embed_dim": 8,
            "model.layers": 1, "model.heads": 2, "model.ff": 8, "train.epochs": 10,
            "train.checkpoint_every": 10, "train.batch_size": 8, "train.seeds": [0]}  # fmt: skip
    run = train(build_config({}, over), tmp_path, progress=False).run
    cfg = _llc(batch_size=8, checkpoints="last",
               restrict={"h0": ["L0.*#head=0"], "h1": ["L0.*#head=1"]})  # fmt: skip
    out = estimate_runs([run.path], cfg, progress=False)[0]
    assert out.restricted == {"h0": [10], "h1": [10]}
    s = {
        r.get("restriction"): r for r in llc_results.llc_summary(read_parquet(run.llc).to_pylist())
    }
    assert set(s) == {None, "h0", "h1"} and all(math.isfinite(r["llc_mean"]) for r in s.values())
    with pytest.raises(ConfigError, match="head 2 does not exist"):
        estimate_runs([run.path], _llc(restrict={"h": ["L0.Wo#head=2"]}), progress=False)


def test_cli_external_restrict(external_inputs, run_cli, refused, tmp_path) -> None:
    refused(["llc", "external", *external_inputs, "--restrict", "x=9.*"], tmp_path,
            "pattern '9.*' of restriction 'x' matches no parameter", "'0.weight'")  # fmt: skip
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    rc, out, err = run_cli(
        ["llc", "external", *external_inputs, "--draws", "40", "--restrict", "first=0.*",
         "--restrict", "last=2.weight"], tmp_path)  # fmt: skip
    assert rc == 0, err
    got = json.loads(out.strip().splitlines()[0])
    kinds = {(r.get("restriction"), r["step"]) for r in got["llc"]}
    assert kinds == {(k, s) for k in (None, "first", "last") for s in (10, 20, 30, 40)}
    # `llc estimate` on the external run directory: same flag, same cache
    again = ["llc", "estimate", got["run_dir"], "--draws", "40", "--chains", "2", "--burnin",
             "10", "--restrict", "first=0.*", "--quiet"]  # fmt: skip
    rc, out, err = run_cli(again, tmp_path)
    assert rc == 0, err
    assert "0 checkpoints sampled, 4 already estimated" in out + err

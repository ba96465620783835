"""Every sampler's own hyperparameters, end to end: registry -> config -> hash -> kernel, from
Python, the CLI (`llc estimate`, `llc external`) and the devinterp drop-in."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from grokbasin import sampler_registry
from grokbasin.compat.devinterp import _method, estimate_learning_coeff_with_summary
from grokbasin.config import LLCConfig, build_config
from grokbasin.errors import ConfigError
from grokbasin.llc import estimate_llc, from_potential
from grokbasin.sampler_registry import Option, SamplerSpec

# Sampler hashes recorded before options existed: runs estimated with default settings keep
# their cached rows (SGLD's above all: every paper-scale result is keyed by it).
HASHES_BEFORE_OPTIONS = {"sgld": "34082856ec", "rmsprop_sgld": "98f3abcccd", "sgnht": "66479f4acc"}


def test_default_options_leave_hashes_unchanged_and_others_enter_them() -> None:
    for method, before in HASHES_BEFORE_OPTIONS.items():
        assert LLCConfig(method=method).sampler_hash() == before
        defaults = {k: o.default for k, o in sampler_registry.SAMPLERS[method].options.items()}
        assert LLCConfig(method=method, options=defaults).sampler_hash() == before
    hashes = {
        LLCConfig(method="sgnht", options={"diffusion": 0.05}).sampler_hash(),
        LLCConfig(method="rmsprop_sgld", options={"rms_alpha": 0.9}).sampler_hash(),
        LLCConfig(method="rmsprop_sgld", options={"rms_eps": 0.01}).sampler_hash(),
    }
    assert len(hashes) == 3 and not hashes & set(HASHES_BEFORE_OPTIONS.values())


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"llc.method": "hmc"}, ("llc.method", "'hmc'", "sgld, rmsprop_sgld, sgnht")),
        ({"llc.options": {"diffusion": 0.1}}, ("llc.options", "'diffusion'", "of sgld")),
        ({"llc.method": "sgnht", "llc.options": {"diffusion": -1}}, ("diffusion", "> 0.0")),
        ({"llc.method": "rmsprop_sgld", "llc.options": {"rms_alpha": 1.5}}, ("< 1.0",)),
        ({"llc.method": "sgnht", "llc.options": {"alpha": 0.5}}, ("its options: diffusion",)),
    ],
)
def test_config_refuses_unknown_samplers_and_options(override, needles) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({}, override)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_a_registry_entry_is_all_the_config_and_drop_in_need(monkeypatch) -> None:
    entry = SamplerSpec("a toy", {"k": Option(1.0, 0.0)}, devinterp_names=("Toy",))
    monkeypatch.setitem(sampler_registry.SAMPLERS, "toy", entry)
    cfg = LLCConfig(method="toy", options={"k": 2.0})
    assert cfg.sampler_options() == {"k": 2.0}
    assert cfg.sampler_hash() != LLCConfig(method="toy").sampler_hash()
    assert _method("Toy") == _method("toy") == "toy"


def _quadratic_estimate(method: str, options: dict | None) -> np.ndarray:
    """λ̂ per chain of a 6-parameter quadratic potential (a regular model)."""
    p0 = {"w": torch.zeros(3, 6)}
    target = from_potential(lambda w: 0.5 * (w["w"] ** 2).sum(-1), p0, n=1000)
    est = estimate_llc(
        target, chains=3, nbetas=[100.0], step_size=1e-3, gamma=1.0, burnin=100, draws=200,
        method=method, options=options, seed=4, diagnose=False,
    )  # fmt: skip
    return est.llc[0, 0]


@pytest.mark.parametrize(
    ("method", "changed"),
    [("sgnht", {"diffusion": 0.05}), ("rmsprop_sgld", {"rms_alpha": 0.5, "rms_eps": 0.01})],
)
def test_options_reach_the_kernel(method, changed) -> None:
    """Defaults spelt out give the same chains; other values other chains; both are sane (a
    regular 6-parameter model: λ = d/2 = 3, here within a factor 2 at these short chains)."""
    base = _quadratic_estimate(method, None)
    defaults = {k: o.default for k, o in sampler_registry.SAMPLERS[method].options.items()}
    np.testing.assert_array_equal(_quadratic_estimate(method, defaults), base)
    other = _quadratic_estimate(method, changed)
    assert not np.array_equal(other, base)
    for llc in (base, other):
        assert np.all(np.isfinite(llc)) and 1.5 < llc.mean() < 6, llc
    with pytest.raises(ValueError, match="not an option of"):
        _quadratic_estimate(method, {"nope": 1.0})


def _rows(path) -> list[dict]:
    return pq.read_table(path / "llc.parquet").to_pylist()


def test_cli_llc_estimate_sets_and_records_sampler_options(run_cli, refused, pair) -> None:
    run = pair[0]
    flags = ["--chains", "2", "--burnin", "0", "--draws", "20", "--checkpoints", "last", "--quiet"]
    args = ["llc", "estimate", str(run.path), *flags, "--sampler", "sgnht"]
    rc, out, err = run_cli([*args, "--sampler-option", "diffusion=0.05"], run.path.parent)
    assert rc == 0, out + err
    rc, out, err = run_cli(args, run.path.parent)  # --sampler alone: the defaults again
    assert rc == 0, out + err
    configs = [json.loads(r["sampler_config"]) for r in _rows(run.path)]
    assert {c["options"].get("diffusion", 0.01) for c in configs} == {0.01, 0.05}
    assert len({r["sampler_hash"] for r in _rows(run.path)}) == 2
    refused([*args, "--sampler-option", "diffusion"], run.path.parent, "llc.options", "NAME=VALUE")
    refused([*args, "--sampler-option", "alpha=1"], run.path.parent, "'alpha'", "diffusion")


def test_cli_llc_external_takes_sampler_options(run_cli, external_inputs, tmp_path) -> None:
    base = ["llc", "external", *external_inputs, "--sampler", "rmsprop_sgld"]
    results = []
    for extra in ([], ["--sampler-option", "rms_alpha=0.9", "--sampler-option", "rms_eps=0.2"]):
        rc, out, err = run_cli([*base, *extra], tmp_path)
        assert rc == 0, out + err
        results.append(json.loads(out))
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    hashes = {r["sampler_hash"] for r in _rows(run)}
    assert len(hashes) == 2 and results[0] != results[1]


def test_devinterp_drop_in_maps_sampler_constants() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g)
    Y = X @ torch.tensor([[1.0], [-1.0], [0.5]])
    net = torch.nn.Linear(3, 1)
    loader = DataLoader(TensorDataset(X, Y), batch_size=16)

    def run(method: str, **extra: float) -> dict:
        return estimate_learning_coeff_with_summary(
            net, loader, evaluate=lambda m, d: torch.nn.functional.mse_loss(m(d[0]), d[1]),
            sampling_method=method, num_chains=2, num_draws=10, seed=1, verbose=False,
            optimizer_kwargs={"lr": 1e-4, "localization": 1.0, "nbeta": 10.0, **extra},
        )  # fmt: skip

    default = run("SGNHT")["loss/trace"]
    np.testing.assert_array_equal(run("SGNHT", diffusion_factor=0.01)["loss/trace"], default)
    assert not np.array_equal(run("SGNHT", diffusion_factor=0.1)["loss/trace"], default)
    assert math.isfinite(run("rmsprop_sgld", alpha=0.9, eps=0.2)["llc/mean"])
    run("SGLD", alpha=0.99)  # another sampler's constant at its default: devinterp accepts it
    with pytest.raises(ValueError, match="setting of rmsprop_sgld, not of sgnht"):
        run("SGNHT", alpha=0.5)

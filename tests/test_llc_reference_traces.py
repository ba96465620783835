"""No numbers change: sampler traces of every path against values recorded from the sampler before
the kernel refactor (issue 15): same noise stream, update formula and minibatch order.

``tests/data/llc_reference_traces.json`` was written by this module's ``__main__`` from the code
at commit fc2db3c; regenerate it only when a change of numbers is intended and documented.
Each case uses only the stable public API (``estimate_llc`` and the target constructors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grokbasin import rng
from grokbasin.config import build_config
from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.targets import (
    from_functional,
    from_modular,
    from_module,
    from_potential,
    modular_train_rows,
)
from grokbasin.models import build_model

DATA = Path(__file__).parent / "data" / "llc_reference_traces.json"
FIELDS = ("traces", "init_loss", "full_init_loss", "first_batch_loss", "mala_accept")


def _linear(params, x):
    return torch.bmm(x, params["W"].transpose(1, 2)) + params["b"][:, None, :]


def _mse(pred, y):
    return 0.5 * (pred - y).square().sum(-1).mean(-1)


def _data(n: int = 48, M: int = 3, N: int = 2):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, M, generator=g)
    return X, X @ torch.randn(N, M, generator=g).T + 0.1 * torch.randn(n, N, generator=g)


def _linear_p0(R: int, transposed: bool = False):
    g = torch.Generator().manual_seed(5)
    W = torch.randn(R, 2, 3, generator=g) * 0.3
    if transposed:  # same values, non-contiguous memory: the fused update's torch path
        W = W.transpose(1, 2).contiguous().transpose(1, 2)
    return {"W": W, "b": torch.randn(R, 2, generator=g) * 0.1}


def _modular(loss: str = "centred_mse", R: int = 6):
    cfg = build_config(
        {}, {"task.p": 11, "model.width": 16, "train.loss": loss, "train.batch_size": 16}
    )
    params = build_model(cfg.model, 11, 11).init(rng.key([0, 1]))
    params = {k: v.repeat_interleave(R // 2, 0).contiguous() for k, v in params.items()}
    rows = modular_train_rows(cfg).expand(2, -1).repeat_interleave(R // 2, 0).contiguous()
    return cfg, params, rows


STEPS = dict(burnin=4, draws=12, seed=7, diagnose=False)


def _cases() -> dict:
    """name -> a function returning the SampleResult of one sampler path."""
    X, Y = _data()
    kw = dict(STEPS, chains=3, nbetas=[20.0], step_size=1e-3, gamma=2.0)

    def modular(loss="centred_mse", fast=True, fused=True, workers=1):
        cfg, p, rows = _modular(loss)
        t = from_modular(cfg, p, rows, 8, fast=fast)
        return estimate_llc(
            t,
            groups=2,
            chains=3,
            step_size=[1e-3, 2e-3, 3e-3] * 2,
            gamma=5.0,
            fused=fused,
            cpu_workers=workers,
            **STEPS,
        ).result

    def functional(method="sgld", transposed=False, workers=1, **extra):
        t = from_functional(_linear, _mse, _linear_p0(3, transposed), X, Y, 16)
        args = {**kw, "weight_decay": 0.1, "noise_level": 0.7, **extra}
        return estimate_llc(t, method=method, cpu_workers=workers, **args).result

    def per_replica(workers=1):
        Xr = torch.stack([X, X.flip(0), X * 0.5])
        Yr = torch.stack([Y, Y.flip(0), Y * 0.5])
        t = from_functional(_linear, _mse, _linear_p0(3), Xr, Yr, 16, per_replica=True)
        return estimate_llc(t, cpu_workers=workers, **kw).result

    def masked(method="sgld"):
        mask = {"W": torch.tensor([[0.0], [1.0]]).expand(2, 3)}
        t = from_functional(_linear, _mse, _linear_p0(3), X, Y, 16, names=["W"], masks=mask)
        eps = 1e-4 if method == "sgnht" else 1e-3
        return estimate_llc(t, method=method, **{**kw, "step_size": eps}).result

    def module(workers=1):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        t = from_module(net, torch.nn.functional.mse_loss, X, Y, replicas=3, batch_size=16)
        return estimate_llc(t, cpu_workers=workers, **kw).result

    def potential(mala=False, workers=1):
        t = from_potential(lambda p: (p["w"] ** 4).sum(1) + 0.5 * p["w"].square().sum(1), _pw())
        return estimate_llc(
            t,
            chains=4,
            nbetas=[100.0],
            step_size=[5.0, 1e-3, 2e-3, 1e-3],
            gamma=0.0,
            mala=mala,
            cpu_workers=workers,
            **STEPS,
        ).result

    return {
        "modular_fast_fused_numba": lambda: modular(),
        "modular_fast_fused_numba_2workers": lambda: modular(workers=2),
        "modular_ce_fast_fused": lambda: modular("cross_entropy"),
        "modular_fast_generic_step": lambda: modular(fused=False),
        "modular_autograd_generic_step": lambda: modular(fast=False, fused=False),
        "modular_autograd_fused": lambda: modular(fast=False),
        "functional_fused_numba": lambda: functional(),
        "functional_fused_torch": lambda: functional(transposed=True),
        "functional_generic_step": lambda: functional(fused=False),
        "functional_norms": lambda: functional(record_norms=True),
        "functional_devinterp_baseline": lambda: functional(baseline="devinterp"),
        "functional_rmsprop": lambda: functional("rmsprop_sgld", step_size=1e-4),
        "functional_sgnht": lambda: functional("sgnht", step_size=1e-4),
        "functional_sgnht_norms": lambda: functional("sgnht", step_size=1e-4, record_norms=True),
        "per_replica": lambda: per_replica(),
        "per_replica_3workers": lambda: per_replica(workers=3),
        "masked_sgld": lambda: masked(),
        "masked_sgnht": lambda: masked("sgnht"),
        "module": lambda: module(),
        "module_2workers": lambda: module(workers=2),
        "potential_diverging": lambda: potential(),
        "potential_mala": lambda: potential(mala=True),
    }


def _pw() -> dict[str, torch.Tensor]:
    return {"w": torch.linspace(-0.5, 0.5, 4 * 3).reshape(4, 3)}


def _record(res) -> dict:
    out = {k: np.asarray(getattr(res, k)).tolist() for k in FIELDS if getattr(res, k) is not None}
    out["diverged"] = res.diverged.tolist()
    if res.norms is not None:
        out["norms"] = {k: v.tolist() for k, v in res.norms.items()}
    return out


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(DATA.read_text())


@pytest.mark.parametrize("case", sorted(_cases()))
def test_traces_equal_pre_refactor_reference(case: str, reference: dict) -> None:
    # Recorded on this code's predecessor: identical arithmetic gives identical float32 values
    # (0 difference on the recording machine); rtol 1e-5 leaves room for another CPU's BLAS
    # summation order only. A changed noise stream, formula or minibatch order moves traces by
    # ~1e-2 relative and fails.
    got, want = _record(_cases()[case]()), reference[case]
    assert set(got) == set(want)
    assert got["diverged"] == want["diverged"]
    for k in FIELDS:
        if k in want:
            np.testing.assert_allclose(np.array(got[k]), np.array(want[k]), rtol=1e-5, atol=1e-8)
    for k, v in want.get("norms", {}).items():
        np.testing.assert_allclose(np.array(got["norms"][k]), np.array(v), rtol=1e-5, atol=1e-8)


def max_difference(reference: dict) -> float:
    """Largest absolute difference of any recorded value (0.0 when bit-identical)."""
    worst = 0.0
    for case, fn in _cases().items():
        got, want = _record(fn()), reference[case]
        for k in FIELDS:
            if k in want:
                a, b = np.array(got[k], float), np.array(want[k], float)
                same_nan = np.isnan(a) == np.isnan(b)
                assert same_nan.all(), case
                worst = max(worst, float(np.nanmax(np.abs(a - b), initial=0.0)))
        for k, v in want.get("norms", {}).items():
            worst = max(worst, float(np.abs(np.array(got["norms"][k]) - np.array(v)).max()))
    return worst


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        DATA.write_text(json.dumps({k: _record(fn()) for k, fn in _cases().items()}, indent=0))
        print(f"wrote {DATA}")
    else:
        print(f"max |new - reference| = {max_difference(json.loads(DATA.read_text())):.3g}")

"""Cross-check (issue 21 item 3): ``grokbasin.llc.bif`` and ``grokbasin.llc.susceptibilities``
against devinterp 2.0.1's ``compute_bif`` (sequence level: correlation, covariance, chains
stacked or averaged) and ``compute_susceptibilities`` on random traces shaped as devinterp
stores them. devinterp is not a dependency: unpack its wheel somewhere and put it on PYTHONPATH;
its heavy imports that these two functions never use (``datasets``, its sampler) are stubbed.
Prints the largest absolute differences; exit status 1 above 1e-12.

    pip download devinterp==2.0.1 --no-deps -d /tmp/di && unzip -q -o /tmp/di/*.whl -d /tmp/di/x
    PYTHONPATH=/tmp/di/x python benchmarks/crosscheck_devinterp_influence.py
"""

from __future__ import annotations

import sys
import types

import numpy as np

STUBS = (
    "datasets",
    "devinterp.slt.lm_loss",
    "devinterp.slt.sampler",
    "devinterp.slt.sampling",
    "devinterp.slt.observables",
)


def _stub_unused_imports() -> None:
    """Empty modules for the imports the two post-processing functions never call."""
    for name in STUBS:
        mod = types.ModuleType(name)
        for attr in ("Dataset", "LossFn", "ParamMasks", "ObservableSpec"):
            setattr(mod, attr, object)
        mod.sample = None
        mod.to_obs_id = lambda name: name  # identity for the plain names used here
        sys.modules[name] = mod


def main() -> None:
    import xarray as xr

    _stub_unused_imports()
    from devinterp.slt.bif import compute_bif
    from devinterp.slt.susceptibilities import compute_susceptibilities

    from grokbasin.llc import bif, susceptibilities

    rng = np.random.default_rng(0)
    C, D, m = 3, 8, 5
    ids = np.zeros((m, 2), dtype=int)
    loss = rng.normal(size=(C, D, m, 1))  # devinterp: (chain, draw, batch, token_pos)
    dims = ("chain", "draw", "batch_probe", "token_pos")
    tree = xr.DataTree(
        xr.Dataset({"loss_probe": (dims, loss), "input_ids_probe": (("batch_probe", "t"), ids)})
    )
    worst = {}
    for cov, chains in ((False, "stack"), (True, "stack"), (False, "mean")):
        theirs = compute_bif(
            tree, correlation_method="sequence", compute_covariance=cov,
            reduce_chain_dimension_method=chains, device="cpu",
        )["influences"].values  # fmt: skip
        ours = bif(loss[..., 0], kind="covariance" if cov else "correlation", chains=chains)
        worst[f"bif {'covariance' if cov else 'correlation'}, chains {chains}"] = np.abs(
            theirs - ours
        ).max()

    def run(seed: int):
        r = np.random.default_rng(seed)
        pt, probe = r.normal(size=(C, D, 4, 1)), r.normal(size=(C, D, m, 1))
        ds = xr.Dataset(
            {
                "loss_pile": (("chain", "draw", "batch_pile", "token_pos"), pt),
                "loss_probe": (dims, probe),
                "input_ids_pile": (("batch_pile", "t"), np.zeros((4, 2), dtype=int)),
                "input_ids_probe": (("batch_probe", "t"), ids),
                "init_loss": (("chain",), r.normal(size=C)),
            }
        )
        return xr.DataTree(ds), pt.mean(axis=(2, 3)), probe[..., 0], ds["init_loss"].values

    full, f_pt, f_probe, init = run(1)
    restricted, r_pt, r_probe, _ = run(2)
    out = compute_susceptibilities({"full": full, "l0h1": restricted}, "pile")
    theirs = out["susceptibilities"].dataset["sus"].values[:, 0]
    ours = susceptibilities(r_pt, r_probe, init, f_pt, f_probe)
    worst["susceptibilities (restricted vs full)"] = np.abs(theirs - ours).max()
    for k, v in worst.items():
        print(f"{k:45s} max |Δ| = {v:.1e}")
    sys.exit(0 if max(worst.values()) <= 1e-12 else 1)


if __name__ == "__main__":
    main()

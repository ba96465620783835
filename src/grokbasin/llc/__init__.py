"""LLC estimation: SGLD kernels, sampling targets, the batched estimator, diagnostics, Laplace."""

from grokbasin.llc.estimate import estimate_llc, sample
from grokbasin.llc.targets import from_functional, from_module, from_potential
from grokbasin.llc.trajectory import estimate_run, estimate_runs

__all__ = [
    "estimate_llc",
    "estimate_run",
    "estimate_runs",
    "from_functional",
    "from_module",
    "from_potential",
    "sample",
]

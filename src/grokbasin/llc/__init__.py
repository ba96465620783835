"""LLC estimation: SGLD kernels, sampling targets, the batched estimator, diagnostics, Laplace.

``trajectory`` (your own model and checkpoints, :mod:`grokbasin.llc.external`) is a function;
it shadows the attribute of the submodule ``grokbasin.llc.trajectory`` (built-in runs), which
is still imported by name: ``from grokbasin.llc.trajectory import estimate_runs``.
"""

from grokbasin.llc.estimate import estimate_llc, sample
from grokbasin.llc.influence import bif, susceptibilities
from grokbasin.llc.targets import from_functional, from_module, from_potential
from grokbasin.llc.trajectory import estimate_run, estimate_runs

from grokbasin.llc.external import trajectory  # isort: skip  (after the submodule: see above)

__all__ = [
    "bif",
    "estimate_llc",
    "estimate_run",
    "estimate_runs",
    "from_functional",
    "from_module",
    "from_potential",
    "sample",
    "susceptibilities",
    "trajectory",
]

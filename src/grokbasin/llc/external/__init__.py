"""LLC trajectories for any PyTorch model and folder of checkpoints (see :mod:`.core`)."""

from grokbasin.llc.external.core import TrajectoryResult, prepare, trajectory
from grokbasin.llc.external.rundir import (
    calibrate,
    calibrate_run,
    estimate_run,
    is_external,
    load_inputs,
)

__all__ = [
    "TrajectoryResult",
    "calibrate",
    "calibrate_run",
    "estimate_run",
    "is_external",
    "load_inputs",
    "prepare",
    "trajectory",
]

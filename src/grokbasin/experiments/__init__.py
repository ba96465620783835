"""Named paper experiments and the sweep engine that runs them (deduplicated, resumable)."""

from grokbasin.experiments.registry import list_experiments, run_experiment
from grokbasin.experiments.sweep import load_sweep, run_sweep

__all__ = ["list_experiments", "load_sweep", "run_experiment", "run_sweep"]

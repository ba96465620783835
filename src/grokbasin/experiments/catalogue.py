"""Every named experiment, in the order `grokbasin experiment --list` shows them.

Adding an experiment is one module (grids, compute, plot, ``EXPERIMENTS``) plus one line here;
the modules import only ``experiments.experiment`` and ``common``, never the registry.
"""

from __future__ import annotations

from grokbasin.experiments import basin_selection, transformer
from grokbasin.experiments.experiment import Experiment
from grokbasin.experiments.paper_a import (
    critical_data_size,
    gsm,
    llc_scaling,
    sgld_sensitivity,
    trajectory_robustness,
)
from grokbasin.experiments.paper_b import arrhenius, scaling

EXPERIMENTS: tuple[Experiment, ...] = (
    *critical_data_size.EXPERIMENTS,
    *gsm.EXPERIMENTS,
    *llc_scaling.EXPERIMENTS,
    *sgld_sensitivity.EXPERIMENTS,
    *trajectory_robustness.EXPERIMENTS,
    *arrhenius.EXPERIMENTS,
    *scaling.EXPERIMENTS,
    *transformer.EXPERIMENTS,
    *basin_selection.EXPERIMENTS,
)

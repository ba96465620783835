"""Shared fixtures: small configs that train in a second or two on a CPU."""

from __future__ import annotations

import pytest

from grokbasin.config import build_config

TINY = {
    "task": {"p": 11, "frac": 0.5},
    "model": {"width": 24},
    "train": {"epochs": 60, "checkpoint_every": 20, "batch_size": 16, "lr": [3e-3]},
}


@pytest.fixture
def tiny_cfg():
    """A factory for tiny validated configs with dotted overrides."""

    def make(**overrides):
        return build_config(TINY, {k.replace("__", "."): v for k, v in overrides.items()})

    return make

"""SGMCMC samplers as kernels (in the style of BlackJAX and optax) over replica-batched params.

A sampler is ``init(params, setup) -> state`` and ``step(state, grads, t, loss=None) ->
(state, info)`` (:class:`base.Kernel`). Reference kernels return a new state; the fast SGLD
kernels say ``in_place=True`` and update the state they are given (``snapshot`` keeps a copy).
Each sampler module lists its implementations in ``KERNELS``, fastest first and the general
reference last; :func:`select` is the one dispatch that picks the first that applies (SGLD's
fused CPU kernel, its in-place torch path, or the reference). MALA is a wrapper
(:func:`mala.wrap`). The chain loop (``llc.chain``) and the sharding over CPU threads
(``llc.shards``) know nothing about which kernel runs.

Adding a sampler: write ``samplers/<name>.py`` with ``init``, ``step`` and
``KERNELS = (Kernel("<name>", init, step),)``, then add its entry (summary, own options) to
``grokbasin.sampler_registry.SAMPLERS``; the config, the CLI and the devinterp drop-in read it.
"""

from __future__ import annotations

from importlib import import_module

from grokbasin.llc.samplers import mala
from grokbasin.llc.samplers.base import (
    NORM_NAMES,
    Info,
    Kernel,
    Params,
    SamplerHyper,
    Setup,
    State,
    default_nbeta,
    make_hyper,
    noise,
    snapshot,
)
from grokbasin.sampler_registry import METHODS, spec

MALA_METHODS = ("sgld",)  # the MALA proposal model is SGLD's move


def kernels_of(method: str) -> tuple[Kernel, ...]:
    """The implementations of a registered sampler (its module's ``KERNELS``), fastest first."""
    spec(method)
    return import_module(f"grokbasin.llc.samplers.{method}").KERNELS


def check(method: str, use_mala: bool = False) -> None:
    """ValueError in one line for an unknown sampler or MALA on a sampler it does not model."""
    spec(method)
    if use_mala and method not in MALA_METHODS:
        raise ValueError("MALA acceptance is defined for the plain SGLD sampler only")


def select(
    method: str, params: Params, setup: Setup, fast: bool = True, use_mala: bool = False
) -> Kernel:
    """The kernel that runs ``method`` on these parameters: the first implementation that
    applies, or the reference with ``fast=False`` or MALA; wrapped for MALA when asked."""
    check(method, use_mala)
    impls = kernels_of(method)
    if fast and not use_mala:
        kernel = next(k for k in impls if k.applies(params, setup))
    else:
        kernel = impls[-1]
    return mala.wrap(kernel) if use_mala else kernel


__all__ = [
    "MALA_METHODS",
    "METHODS",
    "NORM_NAMES",
    "Info",
    "Kernel",
    "SamplerHyper",
    "Setup",
    "State",
    "check",
    "kernels_of",
    "default_nbeta",
    "make_hyper",
    "noise",
    "select",
    "snapshot",
]

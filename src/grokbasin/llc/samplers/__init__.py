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
``KERNELS = (Kernel("<name>", init, step),)``, then add one line to ``SAMPLERS`` below.
"""

from __future__ import annotations

from grokbasin.llc.samplers import mala, rmsprop_sgld, sgld, sgnht
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

SAMPLERS: dict[str, tuple[Kernel, ...]] = {
    "sgld": sgld.KERNELS,
    "rmsprop_sgld": rmsprop_sgld.KERNELS,
    "sgnht": sgnht.KERNELS,
}
METHODS = tuple(SAMPLERS)
MALA_METHODS = ("sgld",)  # the MALA proposal model is SGLD's move


def check(method: str, use_mala: bool = False) -> None:
    """ValueError in one line for an unknown sampler or MALA on a sampler it does not model."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {', '.join(METHODS)}")
    if use_mala and method not in MALA_METHODS:
        raise ValueError("MALA acceptance is defined for the plain SGLD sampler only")


def select(
    method: str, params: Params, setup: Setup, fast: bool = True, use_mala: bool = False
) -> Kernel:
    """The kernel that runs ``method`` on these parameters: the first implementation that
    applies, or the reference with ``fast=False`` or MALA; wrapped for MALA when asked."""
    check(method, use_mala)
    impls = SAMPLERS[method]
    if fast and not use_mala:
        kernel = next(k for k in impls if k.applies(params, setup))
    else:
        kernel = impls[-1]
    return mala.wrap(kernel) if use_mala else kernel


__all__ = [
    "MALA_METHODS",
    "METHODS",
    "NORM_NAMES",
    "SAMPLERS",
    "Info",
    "Kernel",
    "SamplerHyper",
    "Setup",
    "State",
    "check",
    "default_nbeta",
    "make_hyper",
    "noise",
    "select",
    "snapshot",
]

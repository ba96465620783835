"""Which LLC samplers exist and what each one's own hyperparameters are: one entry per sampler.

Torch-free on purpose: the config validates ``llc.method`` and ``llc.options`` against it, the
CLI lists the choices from it and the devinterp drop-in maps devinterp's names through it,
without importing the kernels. The kernels live in ``grokbasin.llc.samplers.<module>``
(``KERNELS``), looked up by :func:`grokbasin.llc.samplers.kernels_of`.

Adding a sampler: write ``llc/samplers/<name>.py`` with ``init``, ``step`` and ``KERNELS``, then
add one entry to ``SAMPLERS`` below. Every option is a field of ``SamplerHyper`` (a keyword of
``make_hyper``) of the same name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Option:
    """One sampler-specific hyperparameter: its default and the open interval it must lie in."""

    default: float
    low: float
    high: float = math.inf
    help: str = ""

    def check(self, name: str, value: float) -> None:
        """ValueError in one line unless ``low < value < high``."""
        if not (math.isfinite(value) and self.low < value < self.high):
            hi = "" if math.isinf(self.high) else f" and < {self.high}"
            raise ValueError(f"{name} must be > {self.low}{hi}, got {value!r}")


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: its summary, its own options, and what devinterp calls it and them."""

    summary: str
    options: Mapping[str, Option] = field(default_factory=dict)
    devinterp_names: tuple[str, ...] = ()  # devinterp's sampling_method names for it
    devinterp_options: Mapping[str, str] = field(default_factory=dict)  # devinterp kwarg -> ours


SAMPLERS: dict[str, SamplerSpec] = {
    "sgld": SamplerSpec("SGLD (devinterp's default)", devinterp_names=("SGLD",)),
    "rmsprop_sgld": SamplerSpec(
        "RMSprop-preconditioned SGLD",
        {
            "rms_alpha": Option(0.99, 0.0, 1.0, "square-average decay α"),
            "rms_eps": Option(0.1, 0.0, help="preconditioner floor ε in 1/(√V + ε)"),
        },
        devinterp_options={"alpha": "rms_alpha", "eps": "rms_eps"},
    ),
    "sgnht": SamplerSpec(
        "SGNHT (momentum with a Nosé-Hoover thermostat)",
        {"diffusion": Option(0.01, 0.0, help="diffusion factor A")},
        devinterp_names=("SGNHT",),
        devinterp_options={"diffusion_factor": "diffusion"},
    ),
}
METHODS = tuple(SAMPLERS)


def options_help() -> str:
    """Each sampler's own options, for help texts: ``rmsprop_sgld: rms_alpha, rms_eps; ...``."""
    return "; ".join(f"{m}: {', '.join(s.options)}" for m, s in SAMPLERS.items() if s.options)


def spec(method: str) -> SamplerSpec:
    """The registry entry of ``method``; ValueError in one line naming the choices."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {', '.join(METHODS)}")
    return SAMPLERS[method]


def resolve(method: str, options: Mapping[str, float] | None = None) -> dict[str, float]:
    """Every option of ``method`` with ``options`` over the defaults; unknown names and values out
    of range are a ValueError naming the option and what is allowed."""
    own = spec(method).options
    given = dict(options or {})
    unknown = sorted(set(given) - set(own))
    if unknown:
        allowed = ", ".join(own) if own else "none"
        raise ValueError(f"{unknown[0]!r} is not an option of {method} (its options: {allowed})")
    for name, value in given.items():
        own[name].check(name, float(value))
    return {name: float(given.get(name, opt.default)) for name, opt in own.items()}


def non_default(method: str, options: Mapping[str, float] | None) -> dict[str, float]:
    """The options that differ from their defaults: what identifies the sampler beyond ``method``
    (so spelling out a default leaves the sampler hash as it was)."""
    own = spec(method).options
    return {k: float(v) for k, v in sorted(resolve(method, options).items()) if v != own[k].default}

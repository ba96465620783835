"""What every sampler kernel shares: per-replica hyperparameters, the chain setup, the state,
the kernel record, the noise stream and the norm bookkeeping.

Every tensor carries a leading replica axis R and every hyperparameter is an [R] tensor, so
chains, checkpoints, temperatures and an ε×γ calibration grid all advance in one call. Noise
comes from ``grokbasin.rng`` keyed by (replica key, step, parameter), never ``torch.randn``, so
a replica's trajectory does not depend on what else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from grokbasin import rng
from grokbasin.sampler_registry import SAMPLERS
from grokbasin.types import Params

Info = dict[str, Any]  # per-step output of a kernel: "norms" -> {name: [R]}, "mala_accept" -> [R]
NORM_NAMES = ("grad", "localization", "weight_decay", "noise", "distance")
NOISE_TAG = 0x5617D
HYPER_FIELDS = ("step_size", "nbeta", "gamma", "weight_decay", "noise_level", "diffusion")
# every sampler's own options at their registered defaults (one source: sampler_registry)
OPTION_DEFAULTS = {k: o.default for s in SAMPLERS.values() for k, o in s.options.items()}


@dataclass(frozen=True)
class SamplerHyper:
    """Per-replica sampler hyperparameters, each an [R] tensor (broadcast from scalars by
    :func:`make_hyper`). Not the optimiser's ``train.optim.Hyper``."""

    step_size: torch.Tensor
    nbeta: torch.Tensor
    gamma: torch.Tensor
    weight_decay: torch.Tensor
    noise_level: torch.Tensor
    diffusion: torch.Tensor  # SGNHT diffusion factor A
    rms_alpha: float = OPTION_DEFAULTS["rms_alpha"]
    rms_eps: float = OPTION_DEFAULTS["rms_eps"]

    @property
    def replicas(self) -> int:
        return self.step_size.shape[0]

    def subset(self, idx: torch.Tensor | slice) -> SamplerHyper:
        """The same hyperparameters for a subset of replicas."""
        return replace(self, **{k: getattr(self, k)[idx] for k in HYPER_FIELDS})


def make_hyper(
    R: int,
    step_size: float | torch.Tensor,
    nbeta: float | torch.Tensor,
    gamma: float | torch.Tensor = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    noise_level: float | torch.Tensor = 1.0,
    diffusion: float | torch.Tensor = OPTION_DEFAULTS["diffusion"],
    rms_alpha: float = OPTION_DEFAULTS["rms_alpha"],
    rms_eps: float = OPTION_DEFAULTS["rms_eps"],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SamplerHyper:
    """SamplerHyper with every field broadcast to [R] (scalars or [R] tensors/lists accepted)."""

    def vec(v: float | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=dtype, device=device).reshape(-1)
        return t.expand(R).clone() if t.numel() == 1 else t.clone()

    vals = (step_size, nbeta, gamma, weight_decay, noise_level, diffusion)
    h = SamplerHyper(*(vec(v) for v in vals), rms_alpha, rms_eps)
    for name in HYPER_FIELDS:
        if getattr(h, name).shape != (R,):
            raise ValueError(
                f"{name}: expected a scalar or {R} values, got {getattr(h, name).shape}"
            )
    return h


def default_nbeta(batch_size: int) -> float:
    """devinterp's default nβ = B / ln B."""
    return batch_size / math.log(batch_size)


@dataclass(frozen=True)
class Setup:
    """What a kernel is told once for a batch of chains: the centre w*, the hyperparameters, the
    chain keys [R], the sampled parameter names (the rest stay at w*), optional 0/1 masks
    (name -> tensor broadcastable to the parameter) and whether steps report norms."""

    center: Params
    hyper: SamplerHyper
    keys: torch.Tensor
    names: tuple[str, ...]
    masks: dict[str, torch.Tensor] | None = None
    norms: bool = False


@dataclass
class State:
    """A kernel's state: the current parameters (every tensor, sampled or not), the setup, the
    sampler's own slots (momenta, square averages, thermostat), gradient buffers the target may
    write ∇L_B into (fast kernels), and an implementation's precomputed constants."""

    params: Params
    setup: Setup
    slots: dict[str, torch.Tensor] = field(default_factory=dict)
    grads: Params | None = None
    consts: Any = None


class ChainState(Protocol):
    """What the chain loop reads from any kernel's state (wrappers delegate these)."""

    @property
    def params(self) -> Params: ...

    @property
    def grads(self) -> Params | None: ...


def _always(params: Params, setup: Setup) -> bool:
    return True


@dataclass(frozen=True)
class Kernel:
    """One implementation of a sampler: ``init(params, setup) -> state`` takes ownership of
    ``params``; ``step(state, grads, t, loss=None) -> (state, info)`` advances every replica by
    one step with ∇L_B = ``grads`` (minibatch mean, not yet scaled by nβ) and the minibatch loss
    ``loss`` [R] (used by wrappers such as MALA). ``applies`` says whether this implementation
    can run the given parameters and setup.

    State ownership: with ``in_place=False`` a step returns a new state and leaves the one passed
    in as it was (the BlackJAX/optax contract). With ``in_place=True`` (the fast SGLD kernels,
    which allocate nothing per step) ``init`` and ``step`` write into the tensors they were given
    and ``step`` returns the same object: the state passed in is consumed, so copy it first
    (:func:`snapshot`) to keep it."""

    name: str
    init: Callable[[Params, Setup], Any]
    step: Callable[..., tuple[Any, Info]]
    applies: Callable[[Params, Setup], bool] = _always
    in_place: bool = False


def snapshot(state: State) -> State:
    """A copy of a state that no later step of any kernel can change (parameters and slots
    cloned; setup and constants shared, as kernels never write them)."""
    clone = lambda d: {k: v.clone() for k, v in d.items()}  # noqa: E731
    grads = None if state.grads is None else clone(state.grads)
    return State(clone(state.params), state.setup, clone(state.slots), grads, state.consts)


def b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An [R] vector viewed to broadcast against a [R, ...] tensor."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def sq(t: torch.Tensor) -> torch.Tensor:
    """Per-replica sum of squares of a [R, ...] tensor."""
    return t.reshape(t.shape[0], -1).square().sum(1)


def noise(keys: torch.Tensor, step: int, like: Params) -> Params:
    """Standard normal noise for every tensor in ``like`` (sorted by name) from the (replica, step)
    stream: one draw of the concatenated size, split, so the cost is one hash pass per step."""
    names = sorted(like)
    sizes = [like[k][0].numel() for k in names]
    z = rng.normal_pairs(rng.fold_in(keys, NOISE_TAG), step, sum(sizes), like[names[0]].dtype)
    return split(z, names, like)


def split(z: torch.Tensor, names: list[str], like: Params) -> Params:
    """Columns of z [R, Σ sizes] viewed as the tensors of ``like`` (in ``names`` order)."""
    parts = torch.split(z, [like[k][0].numel() for k in names], dim=1)
    return {k: part.view(like[k].shape) for k, part in zip(names, parts, strict=True)}


@dataclass(frozen=True)
class Forces:
    """Per-parameter pieces of the drift, broadcast against the parameter: ε, the noise level σ,
    nβ·∇L_B, γ(w − w*) and ω·w."""

    eps: torch.Tensor
    sigma: torch.Tensor
    grad: torch.Tensor
    loc: torch.Tensor
    wd: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.grad + self.loc + self.wd


def forces(h: SamplerHyper, w: torch.Tensor, g: torch.Tensor, c: torch.Tensor) -> Forces:
    """The drift pieces of one parameter w with gradient g and centre c."""
    gam, wd = b(h.gamma, w), b(h.weight_decay, w)
    return Forces(b(h.step_size, w), b(h.noise_level, w), b(h.nbeta, w) * g, gam * (w - c), wd * w)


def mask_of(setup: Setup, name: str, like: torch.Tensor) -> torch.Tensor | None:
    """The 0/1 mask of parameter ``name`` in ``like``'s dtype (None: unrestricted)."""
    m = setup.masks
    return None if m is None or name not in m else m[name].to(like.dtype)


class NormSums:
    """Per-replica squared norms of the update's pieces, summed over parameters (off: no work)."""

    def __init__(self, R: int, device: torch.device, on: bool):
        self.sq = {n: torch.zeros(R, device=device) for n in NORM_NAMES} if on else None

    def add(self, f: Forces, scale, kick, w, c, mask) -> None:
        """Add one parameter's drift pieces (times ``scale``), noise kick and distance to w*."""
        if self.sq is None:
            return
        mk = mask if mask is not None else 1.0
        self.sq["grad"] += sq(scale * f.grad * mk)
        self.sq["localization"] += sq(scale * f.loc * mk)
        self.sq["weight_decay"] += sq(scale * f.wd * mk)
        self.sq["noise"] += sq(kick * mk)
        self.sq["distance"] += sq((w - c) * mk)

    def info(self) -> Info:
        return {} if self.sq is None else {"norms": {k: v.sqrt() for k, v in self.sq.items()}}


def step_start(state: State, grads: Params, t: int) -> tuple[NormSums, Params, Params, Params]:
    """What every reference step begins with: norm sums, copies of the parameters and slots to
    update, and this step's noise ξ for the parameters that have a gradient."""
    s, params = state.setup, state.params
    norms = NormSums(s.hyper.replicas, next(iter(params.values())).device, s.norms)
    xis = noise(s.keys, t, {k: params[k] for k in grads})
    return norms, dict(params), dict(state.slots), xis

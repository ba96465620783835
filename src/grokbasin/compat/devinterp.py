"""devinterp 1.3.2's ``estimate_learning_coeff(_with_summary)`` with every chain in one batch.

Same arguments and returned keys as ``devinterp.slt.sampler`` 1.3.2, so switching is one import:

    from grokbasin.compat.devinterp import estimate_learning_coeff_with_summary

Where devinterp runs ``num_chains`` chains one after another (each a deep copy of the model and
an optimizer stepping it), this stacks the chains along a replica axis and samples them with
``from_module`` (``torch.func``) and ``estimate_llc`` in one call. Semantics kept from devinterp:
the update (lr = ε, localization = γ, nbeta, weight_decay, noise_level), the default nβ =
B/ln B of the loader's batch (× grad_accum_steps), the recorded loss (the minibatch loss at the
pre-step weights, every ``num_steps_bw_draws``-th step after burn-in), the default ``init_loss``
(the mean loss at w* over the loader's first ``num_chains`` batches, as
``get_init_loss_multi_batch``), λ̂ = nβ·(mean draw loss − init_loss) per chain, and ``llc/std``
with Bessel's correction. Differences: the loader's dataset is materialised in memory (refused
when too large); minibatches are per-chain shuffles of it (the last short batch dropped) rather
than a cycle of the loader; the model is sampled in eval mode (``torch.func`` cannot vmap
dropout or BatchNorm statistic updates; devinterp uses train mode); the noise stream is
grokbasin's, so single chains differ from devinterp's while the distribution of λ̂ is the same.
Sampler names and their own constants (SGNHT's ``diffusion_factor``, RMSprop's ``alpha`` and
``eps``) map through ``grokbasin.sampler_registry``. Unsupported arguments (callbacks, bounding
boxes) raise ValueError instead of being ignored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree
from torch.utils.data import DataLoader

from grokbasin.llc.estimate import estimate_llc
from grokbasin.llc.external.core import module_target
from grokbasin.llc.external.inputs import default_max_bytes
from grokbasin.sampler_registry import SAMPLERS

EvaluateFn = Callable[[torch.nn.Module, Any], Any]
_DEFAULTS = {"lr": 0.01, "noise_level": 1.0, "weight_decay": 0.0, "localization": 0.0}


def _loss_of(results: Any) -> torch.Tensor:
    """The loss in an evaluate() result (devinterp's ``split_results``)."""
    if isinstance(results, dict):
        return results["loss"]
    if isinstance(results, tuple):
        return results[0]
    if isinstance(results, torch.Tensor):
        return results
    if hasattr(results, "loss"):
        return results.loss
    raise ValueError("evaluate must return a tensor, a tuple, a dict or an object with .loss")


def _default_evaluate(model: torch.nn.Module, data: Any) -> Any:
    return model(data)


class _Evaluated(torch.nn.Module):
    """``evaluate(model, batch)`` as a module of the sample indices: data rides as buffers.

    ``from_module`` vmaps ``functional_call(self, params, (idx,))``; inside, ``self.m`` carries the
    replica's parameters, so any ``evaluate`` that calls the model works unchanged.
    """

    def __init__(self, model: torch.nn.Module, evaluate: EvaluateFn, leaves: list, spec: Any):
        super().__init__()
        self.m, self.evaluate, self.spec = model, evaluate, spec
        for i, t in enumerate(leaves):
            self.register_buffer(f"leaf{i}", t, persistent=False)
        self.n_leaves = len(leaves)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        leaves = [getattr(self, f"leaf{i}")[idx] for i in range(self.n_leaves)]
        return _loss_of(self.evaluate(self.m, pytree.tree_unflatten(leaves, self.spec)))


def _materialise(loader: DataLoader, device: torch.device) -> tuple[list, Any, int]:
    """The loader's whole dataset as stacked leaves (pytree of the batch), its spec and size."""
    full = DataLoader(
        loader.dataset, batch_size=max(loader.batch_size or 1, 256), shuffle=False,
        collate_fn=loader.collate_fn,
    )  # fmt: skip
    parts, spec, total, limit = [], None, 0, default_max_bytes()
    for batch in full:
        leaves, spec = pytree.tree_flatten(batch)
        if not all(torch.is_tensor(t) for t in leaves):
            raise ValueError("every item of a loader batch must be a tensor")
        total += sum(t.nbytes for t in leaves)
        if total > limit:
            raise ValueError(
                f"the loader's dataset needs more than {total / 2**30:.2f} GiB in memory (limit "
                f"{limit / 2**30:.2f} GiB); sample from a subset"
            )
        parts.append(leaves)
    if not parts:
        raise ValueError("the loader's dataset is empty")
    leaves = [torch.cat([p[i] for p in parts]).to(device) for i in range(len(parts[0]))]
    n = leaves[0].shape[0]
    if any(t.shape[0] != n for t in leaves):
        raise ValueError("all tensors of a batch must share their first (sample) dimension")
    return leaves, spec, n


def _method(sampling_method: Any) -> str:
    """Our sampler for devinterp's ``sampling_method`` (a class, a function or a name), read off
    the registry's names."""
    name = sampling_method if isinstance(sampling_method, str) else getattr(
        sampling_method, "__name__", ""
    )  # fmt: skip
    for method, entry in SAMPLERS.items():
        if name == method or name in entry.devinterp_names:
            return method
    known = [n for m, e in SAMPLERS.items() for n in (*e.devinterp_names, m)]
    raise ValueError(f"sampling_method {sampling_method!r}: supported are {', '.join(known)}")


def _sampler_options(method: str, kw: dict[str, Any]) -> dict[str, float]:
    """Pop devinterp's sampler-specific kwargs from ``kw`` as our options for ``method``. Another
    sampler's kwarg is accepted only at its default (devinterp's SGMCMC takes them all)."""
    options = {}
    for other, entry in SAMPLERS.items():
        for theirs, ours in entry.devinterp_options.items():
            if theirs not in kw:
                continue
            value = float(kw.pop(theirs))
            if other == method:
                options[ours] = value
            elif value != entry.options[ours].default:
                raise ValueError(
                    f"optimizer_kwargs[{theirs!r}] is a setting of {other}, not of {method}"
                )
    return options


def _init_loss(
    model: torch.nn.Module, loader: DataLoader, evaluate: EvaluateFn, batches: int, device: Any
) -> float:
    """devinterp's default baseline: mean loss at w* over the loader's first ``batches``."""
    total, k = 0.0, 0
    model.train()
    with torch.no_grad():
        for data in islice(loader, min(batches, len(loader))):
            data = pytree.tree_map(lambda t: t.to(device) if torch.is_tensor(t) else t, data)
            total += float(_loss_of(evaluate(model, data)))
            k += 1
    return total / max(k, 1)


def estimate_learning_coeff_with_summary(
    model: torch.nn.Module,
    loader: DataLoader,
    callbacks: list[Callable] = [],  # noqa: B006  (devinterp's signature)
    evaluate: EvaluateFn | None = None,
    sampling_method: Any = "sgld",
    optimizer_kwargs: dict[str, Any] | None = None,
    num_draws: int = 100,
    num_chains: int = 10,
    num_burnin_steps: int = 0,
    num_steps_bw_draws: int = 1,
    init_loss: float | None = None,
    grad_accum_steps: int = 1,
    cores: int | list = 1,
    seed: int | list[int] | None = None,
    device: torch.device | str = torch.device("cpu"),
    gpu_idxs: list[int] | None = None,
    verbose: bool = True,
    optimize_over_per_model_param: dict[str, torch.Tensor] | None = None,
    online: bool = False,
    use_amp: bool = False,
) -> dict[str, Any]:
    """devinterp 1.3.2's summary dict ('llc/mean', 'llc/std', 'llc-chain/i', 'loss/trace'; with
    ``online``: 'init_loss', 'llc/means', 'llc/stds', 'llc/trace', 'loss/trace'), all chains in
    one batched sampler call. ``cores``, ``gpu_idxs``, ``verbose`` and ``use_amp`` are accepted
    and ignored (one batched call needs no worker pool)."""
    if callbacks:
        raise ValueError(
            "callbacks are not supported: chains run as one batched computation, so there is no "
            "per-chain, per-draw hook; the summary already holds the loss traces"
        )
    kw = dict(optimizer_kwargs or {})
    if "temperature" in kw:
        if "nbeta" in kw:
            raise ValueError("Found temperature and nbeta in optimizer_kwargs; use nbeta only")
        kw["nbeta"] = kw.pop("temperature")
    method = _method(sampling_method)
    options = _sampler_options(method, kw)
    if kw.pop("bounding_box_size", None) is not None:
        raise ValueError("optimizer_kwargs['bounding_box_size'] is not supported")
    kw.pop("metrics", None)
    kw.pop("add_grad_correction", None)
    unknown = set(kw) - set(_DEFAULTS) - {"nbeta"}
    if unknown:
        raise ValueError(f"optimizer_kwargs: unsupported keys {sorted(unknown)}")
    hp = {**_DEFAULTS, **kw}
    device = torch.device(device)
    evaluate = evaluate or _default_evaluate
    batch = (loader.batch_size or len(next(iter(loader))[0])) * grad_accum_steps
    nbeta = float(hp["nbeta"]) if "nbeta" in hp else (batch / math.log(batch) if batch > 1 else 1.0)
    model.to(device)
    if init_loss is None or init_loss == 0:  # devinterp: `if not init_loss`
        init_loss = _init_loss(model, loader, evaluate, num_chains * grad_accum_steps, device)
    leaves, spec, n = _materialise(loader, device)
    wrapper = _Evaluated(model, evaluate, leaves, spec).to(device).eval()
    base = {k: v.detach() for k, v in wrapper.named_parameters()}
    C = num_chains
    p0 = {k: v[None].repeat_interleave(C, 0).contiguous() for k, v in base.items()}
    idx = torch.arange(n, device=device)
    masks = None
    if optimize_over_per_model_param:
        masks = {f"m.{k}": v.to(device) for k, v in optimize_over_per_model_param.items()}
    if masks is None:
        target = module_target(wrapper, lambda loss, _: loss, idx, idx, min(batch, n), p0)
    else:
        from grokbasin.llc.targets import from_module

        target = from_module(
            wrapper, lambda loss, _: loss, idx, idx, C, min(batch, n), params0=p0, masks=masks
        )
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    elif not isinstance(seed, int):
        seed = int(list(seed)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = estimate_llc(
            target,
            groups=1,
            chains=C,
            nbetas=[nbeta],
            step_size=float(hp["lr"]),
            gamma=float(hp["localization"]),
            weight_decay=float(hp["weight_decay"]),
            noise_level=float(hp["noise_level"]),
            burnin=num_burnin_steps,
            draws=num_draws,
            thin=num_steps_bw_draws,
            seed=int(seed),
            method=method,
            options=options,
            diagnose=False,
        )
    trace = est.result.traces.astype(np.float32)  # [C, D]
    if not np.isfinite(trace).all():
        raise RuntimeError("NaN detected in loss (a chain diverged): lower lr, raise localization")
    return _summary(trace, float(init_loss), nbeta, online)


def _summary(trace: np.ndarray, init_loss: float, nbeta: float, online: bool) -> dict[str, Any]:
    """devinterp's LLCEstimator / OnlineLLCEstimator results from the loss traces."""
    nb = np.float32(nbeta)
    if online:
        llcs = nb * (trace - np.float32(init_loss))
        return {
            "init_loss": init_loss,
            "llc/means": llcs.mean(axis=0),
            "llc/stds": llcs.std(axis=0, ddof=1),
            "llc/trace": llcs,
            "loss/trace": trace,
        }
    per_chain = nb * (trace.mean(axis=1) - np.float32(init_loss))
    std = float(per_chain.std(ddof=1)) if len(per_chain) > 1 else float("nan")
    return {
        "llc/mean": float(per_chain.mean()),
        "llc/std": std,
        **{f"llc-chain/{i}": float(v) for i, v in enumerate(per_chain)},
        "loss/trace": trace,
    }


def estimate_learning_coeff(
    model: torch.nn.Module,
    loader: DataLoader,
    callbacks: list[Callable] = [],  # noqa: B006  (devinterp's signature)
    evaluate: EvaluateFn | None = None,
    sampling_method: Any = "sgld",
    optimizer_kwargs: dict[str, Any] | None = None,
    num_draws: int = 100,
    num_chains: int = 10,
    num_burnin_steps: int = 0,
    num_steps_bw_draws: int = 1,
    init_loss: float | None = None,
    grad_accum_steps: int = 1,
    cores: int | list = 1,
    seed: int | list[int] | None = None,
    device: torch.device | str = torch.device("cpu"),
    verbose: bool = True,
    optimize_over_per_model_param: dict[str, torch.Tensor] | None = None,
) -> float:
    """The mean λ̂ over chains (devinterp 1.3.2's ``estimate_learning_coeff``), chains batched."""
    return estimate_learning_coeff_with_summary(
        model,
        loader,
        callbacks=callbacks,
        evaluate=evaluate,
        sampling_method=sampling_method,
        optimizer_kwargs=optimizer_kwargs,
        num_draws=num_draws,
        num_chains=num_chains,
        num_burnin_steps=num_burnin_steps,
        num_steps_bw_draws=num_steps_bw_draws,
        init_loss=init_loss,
        grad_accum_steps=grad_accum_steps,
        seed=seed,
        device=device,
        optimize_over_per_model_param=optimize_over_per_model_param,
    )["llc/mean"]


__all__ = ["estimate_learning_coeff", "estimate_learning_coeff_with_summary"]

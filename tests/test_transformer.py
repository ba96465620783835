"""The functional transformer (paper A App. H.3.1) against a torch.nn reference, and its inits."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from grokbasin import rng
from grokbasin.losses import centred_mse
from grokbasin.models import transformer as T


class _Reference(nn.Module):
    """nn.Embedding + nn.TransformerEncoder (post-norm, GELU, no dropout) + mean-pool + Linear."""

    def __init__(self, p: int, d: int, layers: int, heads: int, ff: int, positional: bool):
        super().__init__()
        self.emb = nn.Embedding(p, d)
        self.pos = nn.Parameter(torch.zeros(2, d)) if positional else None
        layer = nn.TransformerEncoderLayer(
            d, heads, ff, dropout=0.0, activation="gelu", batch_first=True
        )
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        if self.pos is not None:
            h = h + self.pos
        return self.out(self.enc(h).mean(dim=1))


def _load(ref: _Reference, params: dict[str, torch.Tensor], r: int) -> None:
    """Copy replica r of the functional params into the reference ([in, out] -> nn [out, in])."""
    with torch.no_grad():
        ref.emb.weight.copy_(params["E"][r])
        if ref.pos is not None:
            ref.pos.copy_(params["P"][r])
        for i, lay in enumerate(ref.enc.layers):
            g = {k.split(".", 1)[1]: v[r] for k, v in params.items() if k.startswith(f"L{i}.")}
            lay.self_attn.in_proj_weight.copy_(g["Wqkv"].T)
            lay.self_attn.in_proj_bias.copy_(g["bqkv"])
            lay.self_attn.out_proj.weight.copy_(g["Wo"].T)
            lay.self_attn.out_proj.bias.copy_(g["bo"])
            lay.linear1.weight.copy_(g["W1"].T)
            lay.linear1.bias.copy_(g["b1"])
            lay.linear2.weight.copy_(g["W2"].T)
            lay.linear2.bias.copy_(g["b2"])
            lay.norm1.weight.copy_(g["ln1_w"])
            lay.norm1.bias.copy_(g["ln1_b"])
            lay.norm2.weight.copy_(g["ln2_w"])
            lay.norm2.bias.copy_(g["ln2_b"])
        ref.out.weight.copy_(params["Wout"][r].T)
        ref.out.bias.copy_(params["bout"][r])


def _perturbed(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Params with LayerNorm and zero biases moved off their init, so every term is exercised."""
    keys = rng.key(list(range(next(iter(params.values())).shape[0])))
    out = {}
    for j, (k, v) in enumerate(sorted(params.items())):
        out[k] = v + 0.1 * rng.normal(rng.fold_in(keys, 500 + j), tuple(v.shape[1:]))
    return out


@pytest.mark.parametrize("heads,positional", [(1, False), (2, True)])
def test_forward_matches_torch_reference(heads: int, positional: bool) -> None:
    p, d, layers, ff, R = 7, 16, 2, 24, 3
    params = _perturbed(
        T.init(rng.key([0, 1, 2]), p, p, d, layers, heads, ff, positional=positional)
    )
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)  # all p² pairs
    got = T.forward(params, x, heads=heads)
    assert got.shape == (R, p * p, p)
    for r in range(R):
        ref = _Reference(p, d, layers, heads, ff, positional).eval()
        _load(ref, params, r)
        with torch.no_grad():
            want = ref(x)
        # float32 with identical weights: only summation order differs, well inside 1e-5.
        torch.testing.assert_close(got[r], want, atol=1e-5, rtol=1e-5)


def test_symmetric_without_positions_and_not_with() -> None:
    p = 5
    x = torch.tensor([[1, 3], [0, 4], [2, 2]])
    xs = x.flip(1)
    plain = T.init(rng.key([4]), p, p, 16, 2, 1, 16)
    # exact symmetry up to float rounding (1e-5): attention + mean-pool ignore token order.
    torch.testing.assert_close(T.forward(plain, x), T.forward(plain, xs), atol=1e-5, rtol=1e-5)
    pos = T.init(rng.key([4]), p, p, 16, 2, 1, 16, positional=True)
    # with positions, swapping operands must change the logits by far more than rounding.
    assert (T.forward(pos, x) - T.forward(pos, xs)).abs().max() > 1e-3


def test_shared_and_per_replica_tokens_agree() -> None:
    p, R = 7, 3
    params = T.init(rng.key([5, 6, 7]), p, p, 16, 2, 1, 32)
    x = rng.randint(rng.key([9]), p, (11, 2))[0]
    shared = T.forward(params, x)
    per = T.forward(params, x.expand(R, -1, -1))
    # same arithmetic on the same tokens; tolerance 1e-6 covers gather-order rounding.
    torch.testing.assert_close(shared, per, atol=1e-6, rtol=1e-6)
    # per-replica tokens: replica r sees its own rows (replica 1 given replica 0's tokens too).
    xr = torch.stack([x, x.flip(0), x])
    out = T.forward(params, xr)
    torch.testing.assert_close(out[1], shared[1].flip(0), atol=1e-6, rtol=1e-6)


def test_replica_independent_of_batch() -> None:
    """A replica's init and output do not depend on which other replicas share the batch."""
    p = 7
    big = T.init(rng.key([3, 11, 42]), p, p, 16, 2, 1, 16)
    one = T.init(rng.key([42]), p, p, 16, 2, 1, 16)
    for k in big:
        assert torch.equal(big[k][2], one[k][0]), k  # exact: counter-based streams
    x = torch.tensor([[0, 1], [5, 6]])
    # batched bmm may change the summation order only: 1e-6.
    torch.testing.assert_close(T.forward(big, x)[2], T.forward(one, x)[0], atol=1e-6, rtol=1e-6)


def test_gradients_flow_to_every_parameter() -> None:
    p, R = 7, 2
    params = {
        k: v.requires_grad_(True)
        for k, v in _perturbed(T.init(rng.key([0, 1]), p, p, 16, 2, 1, 16)).items()
    }
    x = rng.randint(rng.key([1]), p, (20, 2))[0]
    y = (x[:, 0] + x[:, 1]) % p
    loss = centred_mse(T.forward(params, x), y.expand(R, -1))
    assert loss.shape == (R,)
    grads = torch.autograd.grad(loss.sum(), list(params.values()))
    for (k, _), g in zip(params.items(), grads, strict=True):
        assert torch.isfinite(g).all(), k
        assert g.abs().sum() > 0, k  # every tensor reaches the loss


def test_inits_follow_pytorch_defaults() -> None:
    d, ff, p = 64, 128, 31
    params = T.init(rng.key(list(range(4))), p, p, d, 2, 1, ff)
    assert sorted(k for k in params if k.startswith("L1.")) == sorted(
        k.replace("L0.", "L1.") for k in params if k.startswith("L0.")
    )
    # Uniform(-c, c) has std c/sqrt(3); 4 replicas × ≥4096 draws put the sample std within 5%.
    bounds = {
        "L0.Wqkv": math.sqrt(6 / (4 * d)),
        "L0.Wo": 1 / math.sqrt(d),
        "L0.W1": 1 / math.sqrt(d),
        "L1.W2": 1 / math.sqrt(ff),
        "Wout": 1 / math.sqrt(d),
    }
    for k, c in bounds.items():
        v = params[k]
        assert v.abs().max() <= c, k
        assert abs(v.std().item() / (c / math.sqrt(3)) - 1) < 0.05, k
    assert abs(params["E"].std().item() - 1) < 0.05  # N(0, 1), 7936 draws: 5%
    assert torch.equal(params["L0.ln1_w"], torch.ones(4, d))
    assert not params["L0.bqkv"].any() and not params["L1.bo"].any()
    with pytest.raises(ValueError, match="divisible"):
        T.init(rng.key([0]), p, p, 30, 1, 4, ff)


# ---------------------------------------------------------------------------------------------
# The `transformer` experiment (H.3.1).


def test_settings_use_the_papers_model_and_optimiser() -> None:
    from grokbasin.experiments.transformer import settings

    for scale in ("small", "paper"):
        base, seeds, llc = settings(scale)
        m, t = base["model"], base["train"]
        assert (m["name"], m["layers"], m["heads"]) == ("transformer", 2, 1)
        assert (t["loss"], t["optimizer"], t["lr"], t["weight_decay"]) == (
            "centred_mse",
            "adam",
            [1e-3],
            [1e-5],
        )
        if scale == "small":  # the paper scale thins by steps (the grid's llc_thin) instead
            assert int(llc["checkpoints"].split(",")[0]) % t["checkpoint_every"] == 0
        assert seeds and llc["nbeta"] == 1000.0 and llc["gamma"] == 1000.0  # the calibrated sampler
    paper = settings("paper")[0]
    assert (paper["model"]["embed_dim"], paper["model"]["ff"]) == (256, 256)


def test_paper_grid_samples_under_both_samplers_and_records_its_trim() -> None:
    from grokbasin.experiments import common
    from grokbasin.experiments.transformer import GRIDS

    g = GRIDS["paper"]
    # the authors' sampler first (their params.csv), the calibrated one beside it
    assert list(g["samplers"]) == ["paper", "calibrated"] and g["trim"]
    paper = g["samplers"]["paper"]
    assert {k: paper[k] for k in common.SAMPLER_PAPER} == common.SAMPLER_PAPER
    # both samplers see the same checkpoints: one thinning rule for the grid, none per sampler
    assert g["llc_thin"]["every"] > 0
    assert "checkpoints" not in g["samplers"]["calibrated"] or (
        paper.get("checkpoints") == g["samplers"]["calibrated"]["checkpoints"]
    )


def test_llc_error_correlation_known_answer() -> None:
    from grokbasin.experiments.transformer import llc_error_correlation

    epochs = np.array([0.0, 10, 20, 30, 40])
    val_acc = np.array([0.0, 0.2, 0.5, 0.6, 0.9])
    m = {"epoch": epochs, "val_acc": val_acc, "val_loss": 2.0 - val_acc}
    lam = (3.0 * (1.0 - val_acc) + 1.0)[:, None].repeat(2, 1)  # LLC affine in the error
    lam[1, 0] = np.nan  # a diverged chain is ignored by the chain mean
    r = llc_error_correlation(epochs, lam, m)
    # exactly affine relations: r = +1 with error and with loss, to float rounding (1e-12).
    assert r["r_llc_val_error"] == pytest.approx(1.0, abs=1e-12)
    assert r["r_llc_val_loss"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(llc_error_correlation(epochs[:2], lam[:2], m)["r_llc_val_error"])
    # from epoch 20 on: 3 points left, still exactly affine; from 30 on: too few -> nan.
    assert llc_error_correlation(epochs, lam, m, start=20)["r_llc_val_loss"] == pytest.approx(1.0)
    assert math.isnan(llc_error_correlation(epochs, lam, m, start=30)["r_llc_val_loss"])


def test_experiment_writes_outputs_and_reruns_nothing(tmp_path) -> None:
    from grokbasin.experiments import common as C
    from grokbasin.experiments import transformer as X

    base, _, llc = X.settings("small")
    base["task"]["p"] = 11
    base["model"].update(embed_dim=8, ff=8)
    base["train"].update(epochs=20, checkpoint_every=10, batch_size=16)
    llc.update(burnin=5, draws=10, batch_size=16, checkpoints=X.trained_checkpoints(20, 10))
    res = X.run(base, [0, 1], llc, "tiny", tmp_path)
    assert res.figures["transformer"].stat().st_size > 10_000  # a real PNG, not an empty file
    rows = list(csv.DictReader(res.tables["transformer"].open()))
    assert [int(r["epoch"]) for r in rows] == [0, 10, 20]
    # every trained checkpoint sampled, the initialisation (no critical point) skipped
    assert [math.isfinite(float(r["llc_mean"])) for r in rows] == [False, True, True]
    assert res.report is not None and res.report.exists()
    again = C.execute(C.configs(base, seeds=[0, 1], llc=llc), tmp_path, True, "local", 1, False)
    assert again.did_nothing  # second invocation: no training, no sampling
    # a second sampler reuses the trained runs and adds its own figure and rows
    other = {**llc, "step_size": llc["step_size"] / 2}
    g = {"base": base, "seeds": [0, 1], "samplers": {"calibrated": llc, "half": other}}
    res2 = X.EXPERIMENT.run(C.Context(tmp_path, "tiny"), g)
    assert set(res2.figures) == {"transformer", "transformer-half"}
    rows2 = list(csv.DictReader(res2.tables["transformer"].open()))
    assert [r["sampler"] for r in rows2] == ["calibrated"] * 3 + ["half"] * 3
    assert [r["llc_mean"] for r in rows2[:3]] == [r["llc_mean"] for r in rows]  # reused as is

"""Replica-batched optimisers equal torch.optim step for step."""

import pytest
import torch

from grokbasin.train import optim


@pytest.mark.parametrize(
    "name,kw",
    [
        ("adam", {}),
        ("adamw", {}),
        ("sgd", {"momentum": 0.9}),
        ("sgd", {"momentum": 0.0}),
    ],
)
def test_matches_torch_optim(name, kw):
    torch.manual_seed(0)
    w0 = torch.randn(3, 4, 5)
    lrs, wds = torch.tensor([1e-2, 3e-3, 1e-3]), torch.tensor([0.0, 1e-2, 0.1])
    hp = optim.Hyper(lr=lrs, weight_decay=wds, momentum=kw.get("momentum", 0.0))
    params = {"w": w0.clone()}
    state = optim.init_state(name, params)
    refs = [w0[r].clone().requires_grad_(True) for r in range(3)]
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    opts = [
        cls([refs[r]], lr=float(lrs[r]), weight_decay=float(wds[r]), foreach=False, **kw)
        for r in range(3)
    ]
    for _ in range(5):
        target = torch.randn(3, 4, 5)
        grads = {"w": 2 * (params["w"] - target)}
        params, state = optim.step(name, params, grads, state, hp)
        for r in range(3):
            opts[r].zero_grad()
            ((refs[r] - target[r]) ** 2).sum().backward()
            opts[r].step()
    for r in range(3):
        # float32 arithmetic in a different order: 1e-6 absolute on O(1) values
        assert torch.allclose(params["w"][r], refs[r].detach(), atol=1e-6)

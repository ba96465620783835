"""Models against dense references; losses against hand computations."""

import math

import numpy as np
import torch

from grokbasin import rng
from grokbasin.losses import accuracy, centred_mse, cross_entropy
from grokbasin.models import mlp, quadratic


def test_centred_mse_by_hand():
    pred = torch.tensor([[[0.5, 0.1], [0.2, 0.9], [0.3, 0.3]]])
    labels = torch.tensor([[0, 1, 1]])
    Y = np.array([[1, 0], [0, 1], [0, 1]], float)
    R = Y - pred[0].numpy()
    P = np.eye(3) - np.ones((3, 3)) / 3
    expected = np.sum((P @ R) ** 2) / (2 * 3)
    assert math.isclose(centred_mse(pred, labels).item(), expected, rel_tol=1e-6)


def test_cross_entropy_and_accuracy():
    pred = torch.randn(2, 5, 3)
    labels = torch.randint(0, 3, (2, 5))
    ce = cross_entropy(pred, labels)
    for r in range(2):
        ref = torch.nn.functional.cross_entropy(pred[r], labels[r])
        assert torch.allclose(ce[r], ref, atol=1e-6)
    assert torch.equal(accuracy(pred, labels), (pred.argmax(-1) == labels).float().mean(1))


def test_quadratic_forward_matches_dense_one_hot_reference():
    p, K = 5, 7
    params = quadratic.init(rng.key([0, 1]), p, p, K)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], 1)
    out = quadratic.forward(params, x)
    X = torch.cat(
        [torch.nn.functional.one_hot(x[:, 0], p), torch.nn.functional.one_hot(x[:, 1], p)], 1
    ).float()
    for r in range(2):
        W, V = params["W"][r], params["V"][r]
        dense = (X @ W) ** 2 @ V.T  # f(x) = V σ(Wᵀx)
        assert torch.allclose(out[r], dense, atol=1e-5)
        # and the Q_k form: f_k(x) = xᵀ Q_k x, Q_k = Σ_j V_kj w_j w_jᵀ
        Q = torch.einsum("kj,aj,bj->kab", V, W, W)
        assert torch.allclose(out[r], torch.einsum("na,kab,nb->nk", X, Q, X), atol=1e-5)


def test_per_replica_tokens_equal_shared_tokens():
    params = quadratic.init(rng.key([0, 1]), 5, 5, 4)
    x = torch.tensor([[0, 1], [2, 3], [4, 4]])
    assert torch.allclose(
        quadratic.forward(params, x), quadratic.forward(params, x.expand(2, 3, 2))
    )


def test_init_matches_nn_linear_bounds():
    p, K = 11, 64
    params = quadratic.init(rng.key([0]), p, p, K)
    assert params["W"].shape == (1, 2 * p, K) and params["V"].shape == (1, p, K)
    assert params["W"].abs().max() <= 1 / math.sqrt(2 * p)
    assert params["V"].abs().max() <= 1 / math.sqrt(K)
    assert params["W"].abs().max() > 0.9 / math.sqrt(2 * p)  # fills the interval


def test_mlp_matches_torch_modules():
    p, D, H = 7, 4, 9
    params = mlp.init(rng.key([3]), p, p, D, H)
    emb = torch.nn.Embedding(p, D)
    l1, l2 = torch.nn.Linear(2 * D, H), torch.nn.Linear(H, p)
    with torch.no_grad():
        emb.weight.copy_(params["E"][0])
        l1.weight.copy_(params["W1"][0].T)
        l1.bias.copy_(params["b1"][0])
        l2.weight.copy_(params["W2"][0].T)
        l2.bias.copy_(params["b2"][0])
    x = torch.tensor([[0, 1], [5, 6], [3, 3]])
    ref = l2(torch.relu(l1(torch.cat([emb(x[:, 0]), emb(x[:, 1])], -1))))
    assert torch.allclose(mlp.forward(params, x)[0], ref, atol=1e-5)

"""Matrix-free Gauss–Newton products of the quadratic net from its structure (SPEC §3.3, §3.4).

f_k(x_n) = Σ_j V_kj h_nj², h_nj = W[a_n, j] + W[p + b_n, j], so the Jacobian never needs forming:

    J (δW, δV) = F δVᵀ + (2h ⊙ δh) Vᵀ              (F = h², δh_n = δW[a_n] + δW[p + b_n]),
    Jᵀ u       = (δW: rows a_n and p + b_n gain 2h ⊙ (u V),  δV: uᵀ F),

i.e. the V-block is block-diagonal in the output k with the same block h² for every k, and the
W-block touches only the two one-hot rows of each sample. H v = (1/N)·J_cᵀ(J_c v) (J_c = P⊥J,
centred over the N training samples) is then six matmul-sized passes per probe instead of a
torch.func jvp + vjp through a generic forward: the same operator (timing in BENCHMARKS.md).
All probes ride one batch axis S, so every pass is one large kernel.
"""

from __future__ import annotations

import torch


class QuadraticGN:
    """H·v at one checkpoint (W [2p, K], V [o, K]) on N training tokens [N, 2].

    Tangents are held probe-inner: δW [2p, S, K], δV [S, o, K], so the row gather and scatter of
    the W-block move contiguous S·K rows and every product is one 2-D matmul over all probes.
    """

    def __init__(
        self,
        W: torch.Tensor,
        V: torch.Tensor,
        tokens: torch.Tensor,
        dtype: torch.dtype = torch.float64,
    ):
        p = W.shape[0] // 2
        self.ia, self.ib = tokens[:, 0].long(), tokens[:, 1].long() + p
        self.W, self.V = W.to(dtype), V.to(dtype)
        h = self.W[self.ia] + self.W[self.ib]  # [N, K]
        self.h2x = (2.0 * h)[:, None, :]  # d(h²)/dh, broadcast over probes
        self.F = h * h
        self.n = int(tokens.shape[0])

    @property
    def shapes(self) -> tuple[int, int, int]:
        """(2p, o, K)."""
        return self.W.shape[0], self.V.shape[0], self.W.shape[1]

    def jvp(self, dW: torch.Tensor, dV: torch.Tensor) -> torch.Tensor:
        """J (δW [2p, S, K], δV [S, o, K]) -> [N, S, o]."""
        S, o, K = dV.shape
        dh = torch.index_select(dW, 0, self.ia).add_(torch.index_select(dW, 0, self.ib))
        dh.mul_(self.h2x)  # [N, S, K]
        out = torch.mm(dh.view(-1, K), self.V.T).view(self.n, S, o)
        out.add_(torch.mm(self.F, dV.reshape(S * o, K).T).view(self.n, S, o))
        return out

    def vjp(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Jᵀ u for u [N, S, o] -> (δW [2p, S, K], δV [S, o, K])."""
        N, S, o = u.shape
        K = self.F.shape[1]
        dV = torch.mm(u.reshape(N, S * o).T, self.F).view(S, o, K)
        g = torch.mm(u.reshape(N * S, o), self.V).view(N, S, K).mul_(self.h2x)
        dW = u.new_zeros(self.W.shape[0], S, K)
        dW.index_add_(0, self.ia, g).index_add_(0, self.ib, g)
        return dW, dV

    def matvec(self, dW: torch.Tensor, dV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H (δW, δV) with H = (1/N)·J_cᵀJ_c, the centred-MSE Gauss–Newton Hessian."""
        u = self.jvp(dW, dV)
        u.sub_(u.mean(dim=0, keepdim=True))
        dW, dV = self.vjp(u)
        return dW.div_(self.n), dV.div_(self.n)

    def sample_matvec(self, u: torch.Tensor) -> torch.Tensor:
        """G u with G = (1/N)·J_cJ_cᵀ on R^{N·o} (u [N, S, o]): H's nonzero spectrum, smaller space.

        Both centrings are applied, so G maps onto the centred subspace (dimension o·(N−1)) and
        the o directions constant over samples are exact zeros of G.
        """
        u = u - u.mean(dim=0, keepdim=True)
        out = self.jvp(*self.vjp(u))
        return out.sub_(out.mean(dim=0, keepdim=True)).div_(self.n)

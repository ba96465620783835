"""Hand-written loss + gradient of the built-in quadratic net for the LLC sampler (SPEC §3.1, §4).

f(x) = (W[a] + W[p+b])² Vᵀ on a minibatch of B rows per replica, W [R, 2p, K], V [R, p, K]:
    h = W[a] + W[p+b],  outᵀ = V·(h²)ᵀ  [R, p, B]  (this layout is ~2× faster for bmm on a CPU),
    centred MSE: L = ‖P⊥(Y − out)‖²/(2B), dL/dout = −P⊥(Y − out)/B;
    cross-entropy: L = mean CE, dL/dout = (softmax(out) − Y)/B;
    dV = g_outᵀ·h²,  dh = 2h ⊙ (g_out·V),  dW = scatter-add of dh into rows a and p+b,
the scatter being one ``index_add_`` per operand into the flattened [R·2p, K] table (3-5× faster
than a one-hot bmm at these sizes on a CPU). Autograd's gather backward is the slow part of the
reference path; this replaces it. Same maths as ``models.quadratic.forward`` + ``losses``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Params = dict[str, torch.Tensor]
LOSSES = ("centred_mse", "cross_entropy")


class QuadraticGrad:
    """loss_and_grad(params, idx [R, B]) -> (loss [R], grads) for the quadratic net, no autograd.

    ``x`` [M, 2] operand tokens and ``y`` [M] labels of the whole dataset, ``rows`` [R, n] each
    replica's training rows; idx holds positions 0..n-1 into a replica's own rows.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rows: torch.Tensor,
        p: int,
        loss: str = "centred_mse",
        names: Sequence[str] = ("V", "W"),
        chunk: int = 16,
    ):
        if loss not in LOSSES:
            raise ValueError(f"no fast gradient for loss {loss!r}; have {', '.join(LOSSES)}")
        self.ia = x[rows, 0]  # [R, n] row of W for operand a (b's row is p + b)
        self.ib = x[rows, 1] + p
        self.y = y[rows]
        self.p, self.loss_name, self.names = p, loss, tuple(sorted(names))
        self.chunk = max(1, chunk)
        self._ws_key: tuple | None = None
        self._ws: dict[str, torch.Tensor] = {}

    def __call__(
        self, params: Params, idx: torch.Tensor, out: Params | None = None
    ) -> tuple[torch.Tensor, Params]:
        """Loss [R] and gradients; written into ``out`` (same shapes as params) when given.

        Replicas go through in blocks of ``chunk`` so the [chunk, B, K] intermediates stay in the
        CPU caches (R = 16 costs 0.6× per replica what R = 80 does at p = 23, K = 256, B = 128),
        and live in a workspace reused across calls: a fresh 10 MB tensor costs ~4× a pass over
        a resident one (page faults), so nothing large is allocated per step.
        """
        R = idx.shape[0]
        grads = (
            {k: out[k] for k in self.names}
            if out is not None
            else {k: torch.empty_like(params[k]) for k in self.names}
        )
        loss = torch.empty(R, dtype=params["W"].dtype, device=idx.device)
        for lo in range(0, R, self.chunk):
            hi = min(R, lo + self.chunk)
            part = {k: v[lo:hi] for k, v in params.items()}
            g = {k: v[lo:hi] for k, v in grads.items()}
            loss[lo:hi] = self._block(part, idx[lo:hi], slice(lo, hi), g)
        return loss, grads

    def _block(self, params: Params, idx: torch.Tensor, rs: slice, grads: Params) -> torch.Tensor:
        """Loss of one block of replicas; gradients written into ``grads`` (views)."""
        W, V = params["W"], params["V"]
        R, _, K = W.shape
        B, p = idx.shape[1], self.p
        ws = self._workspace(R, B, K, W)
        ia = self.ia[rs].gather(1, idx).add_(ws["base"]).reshape(-1)  # rows of the [R·2p, K] table
        ib = self.ib[rs].gather(1, idx).add_(ws["base"]).reshape(-1)
        Wf = W.reshape(R * 2 * p, K)
        h = torch.index_select(Wf, 0, ia, out=ws["h"])
        h = h.add_(torch.index_select(Wf, 0, ib, out=ws["hb"])).view(R, B, K)
        h2 = torch.mul(h, h, out=ws["h2"])
        out_t = torch.bmm(V, h2.transpose(1, 2), out=ws["out_t"])  # [R, p, B]
        loss, g_t = self._loss_grad(out_t, self.y[rs].gather(1, idx))
        if "V" in grads:
            torch.bmm(g_t, h2, out=grads["V"])
        if "W" in grads:
            dh = torch.bmm(g_t.transpose(1, 2), V, out=ws["dh"]).mul_(h).view(R * B, K)
            gW = grads["W"].zero_().view(R * 2 * p, K)
            gW.index_add_(0, ia, dh, alpha=2.0).index_add_(0, ib, dh, alpha=2.0)
        return loss

    def _workspace(self, R: int, B: int, K: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preallocated intermediates for (R, B, K), rebuilt only when a shape or dtype changes."""
        key = (R, B, K, like.dtype, like.device)
        if self._ws_key != key:
            def e(*s: int) -> torch.Tensor:
                return torch.empty(*s, dtype=like.dtype, device=like.device)

            self._ws = {"h": e(R * B, K), "hb": e(R * B, K), "h2": e(R, B, K),
                        "dh": e(R, B, K), "out_t": e(R, self.p, B),
                        "base": torch.arange(R, device=like.device)[:, None] * (2 * self.p)}
            self._ws_key = key
        return self._ws

    def _loss_grad(self, out_t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-replica loss and dL/doutᵀ [R, p, B] from logits outᵀ (overwritten)."""
        R, p, B = out_t.shape
        hot = (torch.arange(R * B, device=y.device) % B) + y.reshape(-1) * B
        hot += torch.arange(R, device=y.device).repeat_interleave(B) * (p * B)
        if self.loss_name == "centred_mse":
            resid = out_t.neg_()
            resid.view(-1).index_add_(0, hot, torch.ones_like(hot, dtype=resid.dtype))
            resid.sub_(resid.mean(2, keepdim=True))  # P⊥: centre over the samples
            loss = resid.square().sum((1, 2)).div_(2 * B)
            return loss, resid.mul_(-1.0 / B)
        logp = torch.log_softmax(out_t, dim=1)
        loss = -logp.view(-1).index_select(0, hot).view(R, B).mean(1)
        g = logp.exp_()
        g.view(-1).index_add_(0, hot, torch.full_like(hot, -1, dtype=g.dtype))
        return loss, g.div_(B)

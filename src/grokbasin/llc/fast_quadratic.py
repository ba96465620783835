"""Hand-written loss + gradient of the built-in quadratic net for the LLC sampler (SPEC §3.1, §4).

f(x) = (W[a] + W[p+b])² Vᵀ on a minibatch of B rows per replica, W [R, 2p, K], V [R, p, K]:
    h = W[a] + W[p+b],  outᵀ = V·(h²)ᵀ  [R, p, B]  (the faster bmm layout on a CPU),
    centred MSE: L = ‖P⊥(Y − out)‖²/(2B), dL/dout = −P⊥(Y − out)/B;
    cross-entropy: L = mean CE, dL/dout = (softmax(out) − Y)/B;
    dV = g_outᵀ·h²,  dh = 2h ⊙ (g_out·V),  dW = dh added into rows a and p+b.
Autograd's gather backward is the slow part of the reference path; this replaces it with
``scatter_add_`` over a contiguous index broadcast along K, which takes PyTorch's sorted fast
path (``index_add_`` pays a per-row kernel launch on a CPU; measurements in BENCHMARKS.md,
"Design measurements"). Same maths as ``models.quadratic.forward`` + ``losses``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grokbasin.types import Params

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
        use_kernels: bool = True,
    ):
        if loss not in LOSSES:
            raise ValueError(f"no fast gradient for loss {loss!r}; have {', '.join(LOSSES)}")
        R = rows.shape[0]
        base = torch.arange(R, device=rows.device)[:, None] * (2 * p)
        # rows of W for operands a and p + b in the flattened [R·2p, K] table, [R, n] each
        self.ia, self.ib = x[rows, 0] + base, x[rows, 1] + p + base
        self.y = y[rows]
        self.p, self.loss_name, self.names = p, loss, tuple(sorted(names))
        self.chunk, self.use_kernels = max(1, chunk), use_kernels
        self._ws_key: tuple | None = None
        self._ws: dict[str, torch.Tensor] = {}

    def __call__(
        self, params: Params, idx: torch.Tensor, out: Params | None = None
    ) -> tuple[torch.Tensor, Params]:
        """Loss [R] and gradients; written into ``out`` (same shapes as params) when given.

        Replicas go through in blocks of ``chunk`` so the [chunk, B, K] intermediates stay in the
        CPU caches, and live in a workspace reused across calls (a fresh large tensor costs page
        faults on every step), so nothing large is allocated per step (BENCHMARKS.md, "Design
        measurements").
        """
        W, V = params["W"], params["V"]
        (R, B), (K, p) = idx.shape, (W.shape[-1], self.p)
        grads = (
            {k: out[k] for k in self.names}
            if out is not None
            else {k: torch.empty_like(params[k]) for k in self.names}
        )
        ws = self._workspace(R, B, K, W)
        ia, ib = self.ia.gather(1, idx).view(-1), self.ib.gather(1, idx).view(-1)
        hot = ws["hot"].zero_()  # one-hot labels, transposed like outᵀ: [R, p, B]
        hot.scatter_(1, self.y.gather(1, idx)[:, None, :], 1.0)
        Wf, loss = W.reshape(R * 2 * p, K), ws["loss"]
        gW = grads["W"].zero_().view(R * 2 * p, K) if "W" in grads else None
        kernels = self._kernels(Wf, gW)
        for lo in range(0, R, self.chunk):
            hi = min(R, lo + self.chunk)
            rs, n = slice(lo * B, hi * B), (hi - lo) * B
            h, h2 = ws["h"][:n], ws["h2"][:n]
            _gather(Wf, ia[rs], ib[rs], h, h2, kernels)
            h2 = h2.view(hi - lo, B, K)
            g = torch.bmm(V[lo:hi], h2.transpose(1, 2), out=ws["out_t"][lo:hi])  # [c, p, B]
            self._loss_grad_(g, hot[lo:hi], loss[lo:hi])
            if "V" in grads:
                torch.bmm(g, h2, out=grads["V"][lo:hi])
            if gW is not None:
                g.mul_(2.0)  # d(h²)/dh = 2h
                dh = torch.bmm(g.transpose(1, 2), V[lo:hi], out=ws["dh"][: hi - lo]).view(-1, K)
                _scatter(gW, ia[rs], ib[rs], dh, h, kernels)
        return loss.clone(), grads

    def _kernels(self, Wf: torch.Tensor, gW: torch.Tensor | None):
        """``cpu_kernels`` when the compiled gather/scatter apply (CPU, float32, plain memory)."""
        from grokbasin.llc import cpu_kernels

        ok = (
            self.use_kernels
            and Wf.device.type == "cpu"
            and Wf.dtype == torch.float32
            and Wf.is_contiguous()
            and not Wf.requires_grad
            and cpu_kernels.available()
        )
        return cpu_kernels if ok and (gW is None or gW.is_contiguous()) else None

    def _workspace(self, R: int, B: int, K: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preallocated intermediates for (R, B, K), rebuilt only when a shape or dtype changes."""
        key = (R, B, K, like.dtype, like.device)
        if self._ws_key != key:
            c = min(R, self.chunk)

            def e(*s: int) -> torch.Tensor:
                return torch.empty(*s, dtype=like.dtype, device=like.device)

            self._ws = {
                "h": e(c * B, K),
                "h2": e(c * B, K),
                "dh": e(c, B, K),
                "out_t": e(R, self.p, B),
                "hot": e(R, self.p, B),
                "loss": e(R),
            }
            self._ws_key = key
        return self._ws

    def _loss_grad_(self, out_t: torch.Tensor, hot: torch.Tensor, loss: torch.Tensor) -> None:
        """Per-replica loss into ``loss`` and dL/doutᵀ in place of the logits outᵀ [c, p, B]."""
        B = out_t.shape[2]
        if self.loss_name == "centred_mse":
            resid = torch.sub(hot, out_t, out=out_t)
            resid.sub_(resid.mean(2, keepdim=True))  # P⊥: centre over the samples
            torch.sum(resid.square(), (1, 2), out=loss).div_(2 * B)
            resid.mul_(-1.0 / B)
            return
        logp = torch.log_softmax(out_t, dim=1)
        torch.sum(logp * hot, (1, 2), out=loss).div_(-B)
        torch.exp(logp, out=out_t).sub_(hot).div_(B)


def _gather(table, ia, ib, h, h2, kernels) -> None:
    """h = table[ia] + table[ib] and h2 = h² (rows of the flattened [R·2p, K] weight table)."""
    if kernels:
        kernels.gather_pairs(table.numpy(), ia.numpy(), ib.numpy(), h.numpy(), h2.numpy())
        return
    torch.index_select(table, 0, ia, out=h)
    h.add_(torch.index_select(table, 0, ib, out=h2))
    torch.mul(h, h, out=h2)


def _scatter(grad_table, ia, ib, dh, h, kernels) -> None:
    """Rows ia and ib of ``grad_table`` each gain dh ⊙ h (``dh`` is overwritten)."""
    if kernels:
        kernels.scatter_pairs(grad_table.numpy(), ia.numpy(), ib.numpy(), dh.numpy(), h.numpy())
        return
    dh.mul_(h)  # a contiguous index broadcast along K takes scatter_add_'s sorted fast path
    grad_table.scatter_add_(0, ia[:, None].expand(-1, h.shape[1]), dh)
    grad_table.scatter_add_(0, ib[:, None].expand(-1, h.shape[1]), dh)


def forward_rows(
    params: Params,
    x: torch.Tensor,
    rows: torch.Tensor,
    p: int,
    chunk: int = 16,
    workspace: dict | None = None,
) -> torch.Tensor:
    """Quadratic-net outputs [R, m, p] on each replica's dataset ``rows`` [R, m] (``x`` [M, 2]
    all operand pairs), in the gradient's layout: row gathers from the flattened W table and
    outᵀ = V·(h²)ᵀ per block of ``chunk`` replicas. For observables (no gradient); the same maths
    as ``models.quadratic.forward`` (equal up to float rounding), several times faster on a CPU.
    ``workspace``: a dict (one per thread) that keeps the [chunk·m, K] intermediates between
    calls, so no large tensor is allocated per draw."""
    from grokbasin.llc import cpu_kernels

    W, V = params["W"], params["V"]
    (R, m), K = rows.shape, W.shape[-1]
    base = torch.arange(R, device=rows.device)[:, None] * (2 * p)
    ia, ib = (x[rows, 0] + base).reshape(-1), (x[rows, 1] + p + base).reshape(-1)
    Wf = W.reshape(R * 2 * p, K)
    ok = Wf.device.type == "cpu" and Wf.dtype == torch.float32 and Wf.is_contiguous()
    kernels = cpu_kernels if ok and cpu_kernels.available() else None
    out_t = torch.empty(R, p, m, dtype=W.dtype, device=W.device)
    c = min(R, max(1, chunk))
    ws = workspace if workspace is not None else {}
    key = (c * m, K, W.dtype, W.device)
    if key not in ws:
        ws[key] = tuple(torch.empty(c * m, K, dtype=W.dtype, device=W.device) for _ in "hh")
    h, h2 = ws[key]
    for lo in range(0, R, c):
        hi = min(R, lo + c)
        rs, n = slice(lo * m, hi * m), (hi - lo) * m
        _gather(Wf, ia[rs], ib[rs], h[:n], h2[:n], kernels)
        torch.bmm(V[lo:hi], h2[:n].view(hi - lo, m, K).transpose(1, 2), out=out_t[lo:hi])
    return out_t.transpose(1, 2)

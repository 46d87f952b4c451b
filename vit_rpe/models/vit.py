"""The from-scratch Vision Transformer: embed -> pre-norm blocks -> pool -> head.

One constructor with timm's argument names; the attention kernel and the relative position
encoding are chosen by name, so every combination is the same model class.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_rpe.models.attention import MultiHeadSelfAttention, build_kernel
from vit_rpe.models.embed import PATCH_EMBEDS, sincos_2d
from vit_rpe.models.rpe import RPES, build_rpe
from vit_rpe.utils.errors import ConfigError

POS_EMBEDS = ("learned", "sincos2d", "none")
POOLS = ("cls", "mean")


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(drop),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(drop),
        )


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(
        self, dim: int, mlp_ratio: float, attn: MultiHeadSelfAttention, drop: float, drop_path: float
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """[B, L, D] -> [B, L, D], or only the first (cls) token's output [B, 1, D] (see forward_features)."""
        y = self.drop_path(self.attn(self.norm1(x), cls_only=cls_only))
        x = (x[:, :1] if cls_only else x) + y
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Images [B, C, H, W] -> logits [B, num_classes].

    ``attention`` names the kernel (softmax, performer, linear) and ``attention_kwargs`` its
    options; ``rpe`` names the relative position mask family and ``rpe_kwargs`` its options
    (distance, impl). Each block gets its own kernel and mask parameters.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_embed: str = "linear",
        pos_embed: str = "learned",
        pool: str = "cls",
        attention: str = "softmax",
        attention_kwargs: dict[str, Any] | None = None,
        rpe: str | None = "none",
        rpe_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        check_choice("patch_embed", patch_embed, PATCH_EMBEDS)
        check_choice("pos_embed", pos_embed, POS_EMBEDS)
        check_choice("pool", pool, POOLS)
        if embed_dim % num_heads:
            raise ConfigError(
                f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}: "
                "change model.net.embed_dim or model.net.num_heads"
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.pool = pool
        self.num_prefix_tokens = 1 if pool == "cls" else 0

        self.patch_embed = PATCH_EMBEDS[patch_embed](img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        else:
            self.pos_embed = None
        if pos_embed == "sincos2d":
            self.register_buffer(
                "pos_embed_fixed", sincos_2d(self.grid_size, embed_dim)[None], persistent=False
            )
        else:
            self.pos_embed_fixed = None
        self.pos_drop = nn.Dropout(drop_rate)

        head_dim = embed_dim // num_heads
        drop_paths = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                mlp_ratio,
                MultiHeadSelfAttention(
                    embed_dim,
                    num_heads,
                    kernel=build_kernel(
                        attention, head_dim, attn_drop=attn_drop_rate, **(attention_kwargs or {})
                    ),
                    rpe=build_rpe(
                        rpe,
                        self.grid_size,
                        num_heads,
                        num_prefix_tokens=self.num_prefix_tokens,
                        head_dim=head_dim,
                        **(rpe_kwargs or {}),
                    ),
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                ),
                drop=drop_rate,
                drop_path=dp,
            )
            for dp in drop_paths
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # --- the backbone interface (models/backbone.py) ---------------------------------------------

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's ViT grouping: the stem, each block (the final norm with the last), the head."""
        return {
            "stem": r"^(?:cls_token|pos_embed|patch_embed\.)",
            "blocks": [(r"^blocks" if coarse else r"^blocks\.(\d+)\.", None), (r"^norm\.", (99999,))],
        }

    def data_config(self) -> dict[str, Any]:
        """The input size the model is built for; its normalisation is the data's (no mean/std)."""
        return {"input_size": (self.in_chans, *self.patch_embed.img_size)}

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay (timm's convention), besides norms and biases:
        the position encodings, absolute and relative. Every parameter of every RPE module, whatever
        its family: decaying general's table while exp's and poly's scalars (1-D, never decayed)
        go free would skew the comparison of the families (RoPE-Mixed's frequencies: no decay
        either, as in Heo et al.'s code)."""
        names = {name for name in ("pos_embed", "cls_token") if getattr(self, name) is not None}
        for prefix, module in self.named_modules():
            if isinstance(module, RPES.base):
                names.update(name for name, _ in module.named_parameters(prefix=prefix))
        return names

    def forward_features(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """Final-normed tokens [B, 1+N, D]; with ``cls_only`` the cls token alone, [B, 1, D].

        ``cls_only`` computes the same cls output with less work: the last block needs every
        token's keys and values, but its attention query, projection, residual and MLP only for
        the cls token, because nothing after it reads the other tokens. ``forward`` uses it for
        cls pooling; the logits and gradients are those of the full computation.
        """
        if cls_only and self.cls_token is None:
            raise ValueError("cls_only needs a cls token (pool='cls')")
        x = self.patch_embed(x)  # [B, N, D]
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.pos_embed_fixed is not None:
            x = x + self.pos_embed_fixed.to(x.dtype)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1+N, D]
        x = self.pos_drop(x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, cls_only=cls_only and i == last)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B, L, D] -> pooled [B, D] (``pre_logits``) -> logits [B, num_classes]."""
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, cls_only=self.pool == "cls"))


def check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}: set model.net.{name} to one of {sorted(choices)}")

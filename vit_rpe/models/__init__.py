"""Backbones: plain nn.Modules mapping images [B, C, H, W] to logits [B, num_classes].

Extension points for user code (docs/attention.md, "Your own kernel or RPE family"): subclass a
base below, register it by name or select it by import path from the command line.
"""

from vit_rpe.models.attention import KERNELS, AttentionKernel, FeatureMapAttention, register_kernel
from vit_rpe.models.rope import RotaryPositionEmbedding
from vit_rpe.models.rpe import RPES, DistanceMask, RelativePositionMask, register_rpe
from vit_rpe.models.vit import VisionTransformer

__all__ = [
    "KERNELS",
    "RPES",
    "AttentionKernel",
    "DistanceMask",
    "FeatureMapAttention",
    "RelativePositionMask",
    "RotaryPositionEmbedding",
    "VisionTransformer",
    "register_kernel",
    "register_rpe",
]

"""Backbones: plain nn.Modules mapping images [B, C, H, W] to logits [B, num_classes]."""

from vit_rpe.models.vit import VisionTransformer

__all__ = ["VisionTransformer"]

"""Relative position encodings: positive multiplicative masks over the patch grid."""

from __future__ import annotations

from torch import nn

FAMILIES = ("none",)


def build_rpe(
    family: str | None,
    grid_size: tuple[int, int],
    num_heads: int,
    num_prefix_tokens: int = 0,
    distance: str = "l1",
    impl: str = "auto",
) -> nn.Module | None:
    """The RPE module for one attention layer, or None for ``family="none"``."""
    if family in (None, "none"):
        return None
    raise ValueError(f"rpe={family!r} is not available yet: use rpe=none")

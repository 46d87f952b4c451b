"""Patch embeddings (image -> token grid) and position embeddings (token grid -> + position)."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from vit_rpe.utils.errors import ConfigError


@runtime_checkable
class GridSized(Protocol):
    """A module whose tensors depend on the patch grid: position embeddings and encodings, patch
    embeddings. ``set_grid_size`` moves it to another grid (another image size, same patch size),
    carrying over what it learned; the ViT calls it on each of its modules."""

    def set_grid_size(self, grid_size: tuple[int, int]) -> None: ...


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    h, w = x
    return (int(h), int(w))


class LinearPatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each one linearly.

    A strided convolution is exactly "flatten each patch, multiply by a matrix", and it is the
    fastest way to do it on every backend.
    """

    def __init__(self, img_size, patch_size, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        for size, patch, axis in zip(self.img_size, self.patch_size, ("height", "width")):
            if size % patch:
                raise ConfigError(
                    f"patch_size {patch} does not divide the image {axis} {size}: "
                    f"choose model.net.patch_size among {divisors(size)}"
                )
        self.grid_size = (
            self.img_size[0] // self.patch_size[0],
            self.img_size[1] // self.patch_size[1],
        )
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        """The convolution takes any image size: only the recorded sizes change."""
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.img_size = (self.grid_size[0] * self.patch_size[0], self.grid_size[1] * self.patch_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, Hg, Wg]
        return x.flatten(2).transpose(1, 2)  # [B, Hg*Wg, D]


class ConvStemPatchEmbed(nn.Module):
    """A small CNN that turns the image into the token grid (the seeds' "CNN projection").

    Stride-2 3x3 convolutions (BatchNorm + ReLU) halve the resolution until the total stride
    equals ``patch_size``; a final 1x1 convolution maps to ``embed_dim`` (Xiao et al., 2021).
    With ``patch_size=1`` it is a stack of stride-1 convolutions that keeps every pixel a token.
    """

    def __init__(self, img_size, patch_size, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if self.patch_size[0] != self.patch_size[1]:
            raise ConfigError("the conv_stem patch embedding needs a square patch_size")
        stride = self.patch_size[0]
        if stride & (stride - 1):
            raise ConfigError(
                f"patch_embed=conv_stem needs a power-of-two patch_size, got {stride}: "
                "use 1, 2, 4, 8, 16 or patch_embed=linear"
            )
        LinearPatchEmbed(img_size, patch_size, in_chans, 1)  # same divisibility check and message
        self.grid_size = (self.img_size[0] // stride, self.img_size[1] // stride)

        num_down = int(math.log2(stride))
        widths = [max(embed_dim // 2 ** (num_down - i), 16) for i in range(max(num_down, 1))]
        layers: list[nn.Module] = []
        channels = in_chans
        for i, width in enumerate(widths):
            step = 2 if i < num_down else 1
            layers += [
                nn.Conv2d(channels, width, 3, stride=step, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        layers.append(nn.Conv2d(channels, embed_dim, 1))
        self.proj = nn.Sequential(*layers)

    set_grid_size = LinearPatchEmbed.set_grid_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, Hg*Wg, D]


class ShiftedPatchEmbed(nn.Module):
    """Shifted patch tokenization (SPT; Lee, Lee and Song 2021, "Vision Transformer for Small-Size
    Datasets", arXiv:2112.13492): each token also sees the pixels around its patch.

    The image is shifted by half a patch in the four diagonal directions (zeros fill what comes in),
    the four copies are stacked with the image on the channels (5 x in_chans), cut into patches,
    and each flattened patch goes through LayerNorm and a linear projection. ``shifted`` and
    ``patches`` are the two steps, so tests can hold each to a written-out reference.
    """

    def __init__(self, img_size, patch_size, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if min(self.patch_size) < 2:
            raise ConfigError(
                f"patch_embed=spt shifts the image by half a patch, so it needs model.net.patch_size >= 2, "
                f"got {patch_size}: choose another patch size or model.net.patch_embed=linear"
            )
        LinearPatchEmbed(img_size, patch_size, in_chans, 1)  # same divisibility check and message
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.shift = (self.patch_size[0] // 2, self.patch_size[1] // 2)
        patch_dim = 5 * in_chans * self.patch_size[0] * self.patch_size[1]
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, embed_dim)

    set_grid_size = LinearPatchEmbed.set_grid_size

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, 5C, H, W]: the image, then its copies moved left-up, right-up,
        left-down and right-down by half a patch."""
        sy, sx = self.shift
        padded = nn.functional.pad(x, (sx, sx, sy, sy))
        h, w = x.shape[-2:]
        # the copy moved by (dy, dx) reads the padded image at offset (sy - dy, sx - dx)
        moves = ((-sy, -sx), (-sy, sx), (sy, -sx), (sy, sx))
        copies = [padded[..., sy - dy : sy - dy + h, sx - dx : sx - dx + w] for dy, dx in moves]
        return torch.cat([x, *copies], dim=1)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C', H, W] -> [B, N, C' * ph * pw], rows of patches, each flattened channel-major."""
        return nn.functional.unfold(x, kernel_size=self.patch_size, stride=self.patch_size).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.patches(self.shifted(x))))  # [B, Hg*Wg, D]


PATCH_EMBEDS = {"linear": LinearPatchEmbed, "conv_stem": ConvStemPatchEmbed, "spt": ShiftedPatchEmbed}


def sincos_2d(grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [Hg*Wg, dim] (MAE / "simple ViT" style).

    A quarter of the channels encode sin(y), cos(y), sin(x), cos(x) at geometric frequencies.
    """
    if dim % 4:
        raise ConfigError(f"pos_embed=sincos2d needs embed_dim divisible by 4, got {dim}")
    h, w = grid_size
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / (dim // 4 - 1 if dim > 4 else 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1).float()


def resample_pos_embed(pos_embed: torch.Tensor, grid_size, old_grid_size) -> torch.Tensor:
    """A learned absolute position embedding [1, h*w, D] of grid ``old_grid_size`` resampled to
    ``grid_size``: bicubic, antialiased when shrinking (timm's ``resample_abs_pos_embed``, as timm
    does for a ViT at another image size)."""
    if tuple(old_grid_size) == tuple(grid_size):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed.float(), list(grid_size), list(old_grid_size), num_prefix_tokens=0
    ).to(pos_embed.dtype)


def infer_grid_size(num_patches: int, like: tuple[int, int]) -> tuple[int, int]:
    """The grid of ``num_patches`` tokens: square when it can be (timm's rule), else with the aspect
    of ``like`` (a state dict saved at another image size records its token count, not its grid)."""
    side = math.isqrt(num_patches)
    h = side if side * side == num_patches else max(1, round(math.sqrt(num_patches * like[0] / like[1])))
    if num_patches % h:
        raise ConfigError(
            f"cannot tell the grid of a position embedding of {num_patches} tokens (the model's grid is "
            f"{like[0]}x{like[1]}): load it into a model of its own image size, then set_grid_size"
        )
    return (h, num_patches // h)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]

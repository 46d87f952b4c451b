"""Batched image transforms that run on the accelerator, after the batch is transferred.

Datasets hand over uint8 images; conversion, resizing, augmentation and normalisation all
happen here on whole batches, so no Python image decoding sits on the training path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DeviceTransform(nn.Module):
    """uint8 [B, C, H, W] -> normalised float [B, C, size, size], augmented when training.

    Augmentations: random crop after zero padding by ``crop_padding`` pixels (the CIFAR
    recipe) and horizontal flips with probability ``hflip``. ``generator`` makes the random
    draws reproducible and lets each process of a distributed job draw differently.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int | Sequence[int] | None = None,
        crop_padding: int = 0,
        hflip: float = 0.0,
    ):
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.generator: torch.Generator | None = None

    def forward(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        if train:
            if self.crop_padding:
                x = random_crop(x, self.crop_padding, self.generator)
            if self.hflip:
                flip = self.rand(x.shape[0], x.device) < self.hflip
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def rand(self, n: int, device: torch.device) -> torch.Tensor:
        gen = self.generator if self.generator is not None and self.generator.device == device else None
        return torch.rand(n, device=device, generator=gen)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad every image by ``padding`` zeros and cut a random window of the original size."""
    B, C, H, W = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    gen = generator if generator is not None and generator.device == x.device else None
    dy = torch.randint(0, 2 * padding + 1, (B, 1), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (B, 1), device=x.device, generator=gen)
    rows = (dy + torch.arange(H, device=x.device)).view(B, 1, H, 1).expand(B, C, H, W + 2 * padding)
    window = padded.gather(2, rows)  # [B, C, H, W + 2p]
    cols = (dx + torch.arange(W, device=x.device)).view(B, 1, 1, W).expand(B, C, H, W)
    return window.gather(3, cols)  # [B, C, H, W]

"""Augmentations beyond crop and flip: RandAugment per image, mixup / cutmix per device batch.

RandAugment's operations (shear, posterize, equalize, ...) are defined on single PIL images, so
they run in the DataLoader (in its workers when ``data.num_workers > 0``) on the uint8 training
batch before it is transferred: a CPU cost per image, measured by ``python -m vit_rpe.bench data``.
Mixup and cutmix are cheap whole-batch operations and run on the device after the transform,
turning integer labels into [B, num_classes] soft targets that the classifier trains on.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from vit_rpe.utils.errors import ConfigError


def build_mixup(mixup: float, cutmix: float, prob: float, num_classes: int):
    """timm's Mixup for whole batches (any size), or None when both alphas are 0.

    Its label smoothing is off: the classifier applies ``model.label_smoothing`` itself.
    """
    if mixup < 0 or cutmix < 0 or not 0 <= prob <= 1:
        raise ConfigError(
            f"data.mixup={mixup} and data.cutmix={cutmix} must be >= 0, data.mix_prob in [0, 1]"
        )
    if mixup == 0 and cutmix == 0:
        return None
    return BatchMixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=prob,
        label_smoothing=0.0,
        num_classes=num_classes,
    )


class BatchMixup:
    """timm's Mixup (batch mode) for batches of any size.

    timm pairs image i with image B-1-i and asserts an even batch. An odd batch (an odd
    ``data.batch_size``, or the last partial batch) is mixed without its last image, which keeps its
    own pixels and a one-hot target: the mixed images are the first B-1, modified in place.
    """

    def __init__(self, **kwargs):
        from timm.data import Mixup

        self.mixup = Mixup(mode="batch", **kwargs)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(images) % 2 == 0:
            return self.mixup(images, labels)
        _, targets = self.mixup(images[:-1], labels[:-1])  # a view: mixes those images in place
        last = torch.nn.functional.one_hot(labels[-1:], self.mixup.num_classes).to(targets.dtype)
        return images, torch.cat([targets, last])


# timm's PosterizeIncreasing (the ``inc1`` ops) keeps 4 - int(0.4 * magnitude) bits: none at the
# top magnitude, 10, which Pillow >= 10 refuses ("bits must be between or equal to 1 and 8"). With
# rand-m9-mstd0.5 about 2% of the sampled magnitudes reach 10, so a CIFAR epoch meets it hundreds of
# times. Capping the magnitude just below 10 keeps one bit there and changes no other operation
# measurably; a user's own ``mmax`` in the string still wins.
MAGNITUDE_CAP = 9.99


class RandAugmentImages(Dataset):
    """Wraps a dataset of uint8 images and applies timm's RandAugment to every image it returns."""

    def __init__(self, dataset: Dataset, config: str):
        from timm.data import rand_augment_transform

        self.dataset = dataset
        self.config = config
        try:
            hparams = {"img_mean": (124, 116, 104)}
            if "-mmax" not in config:
                hparams["magnitude_max"] = MAGNITUDE_CAP
            self.augment = rand_augment_transform(config, hparams)
        except (AssertionError, ValueError, KeyError, IndexError) as err:
            raise ConfigError(
                f"data.randaugment={config!r} is not a timm RandAugment string (e.g. rand-m9-mstd0.5): {err}"
            ) from err

    def __len__(self) -> int:
        return len(self.dataset)

    def augment_one(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.permute(1, 2, 0).numpy()
        pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
        out = np.asarray(self.augment(pil), dtype=np.uint8)
        out = out.mean(axis=-1, keepdims=True).round().astype(np.uint8) if image.shape[0] == 1 else out
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.augment_one(image), label

    def __getitems__(self, indices: list[int]):
        if hasattr(self.dataset, "__getitems__"):
            batch = self.dataset.__getitems__(indices)
        else:
            batch = [self.dataset[i] for i in indices]
        images, labels = default_collate(batch) if isinstance(batch, list) else batch
        return torch.stack([self.augment_one(image) for image in images]), labels

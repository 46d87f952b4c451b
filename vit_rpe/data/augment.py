"""Augmentations beyond crop and flip: RandAugment per image, random erasing and mixup / cutmix
per device batch, and repeated augmentation (a sampler).

RandAugment's operations (shear, posterize, equalize, ...) are defined on single PIL images, so
they run in the DataLoader (in its workers when ``data.num_workers > 0``) on the uint8 training
batch before it is transferred: a CPU cost per image, measured by ``python -m vit_rpe.bench data``.
Mixup and cutmix are cheap whole-batch operations and run on the device after the transform,
turning integer labels into [B, num_classes] soft targets that the classifier trains on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, default_collate

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


class RandomErasingBatch:
    """timm's RandomErasing on a normalised device batch: with ``probability`` per image, a random
    box is filled with per-pixel normal noise (timm's ``pixel`` mode, as DeiT and Lee et al. use).
    timm's object is built once per device, since it draws its noise there."""

    def __init__(self, probability: float):
        if not 0 <= probability <= 1:
            raise ConfigError(
                f"data.random_erasing={probability} is a probability per image: give one in [0, 1]"
            )
        self.probability = probability
        self._by_device: dict[torch.device, object] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device not in self._by_device:
            from timm.data.random_erasing import RandomErasing

            erase = RandomErasing(self.probability, mode="pixel", device=images.device)
            self._by_device[images.device] = erase
        return self._by_device[images.device](images)  # erases in place, image by image


class RepeatedAugmentationSampler(DistributedSampler):
    """Repeated augmentation (Hoffer et al. 2020; DeiT's RASampler): each epoch draws a shuffled
    order, repeats every index ``repeats`` times and deals the list round-robin to the ranks, so the
    copies of an image land on different ranks (or in one batch on one process) and are augmented
    independently. Each rank then keeps its usual share, rounded down to a multiple of 256 over all
    ranks as DeiT does, so an epoch takes as many steps as without repetition, over a third of the
    images (repeats=3).

    Why not timm's RepeatAugSampler: its order depends on the epoch only (not the run's seed), and
    it is no DistributedSampler, so Lightning would shard it a second time under DDP. Being one,
    this sampler is left alone by Lightning, and ``set_epoch`` (called by Lightning before every
    epoch) is all a resumed run needs to draw the same order.
    """

    def __init__(self, dataset, seed: int, repeats: int = 3, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if repeats < 1:
            raise ConfigError(f"data.repeated_augmentation={repeats} must be at least 1 (1 = off)")
        self.repeats = repeats
        per_rank = len(dataset) // 256 * 256 // num_replicas
        self.num_selected = per_rank if per_rank > 0 else math.ceil(len(dataset) / num_replicas)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)
        repeated = order.repeat_interleave(self.repeats)
        per_rank = math.ceil(len(repeated) / self.num_replicas)
        padded = torch.cat([repeated, repeated[: per_rank * self.num_replicas - len(repeated)]])
        mine = padded[self.rank :: self.num_replicas]
        return iter(mine[: self.num_selected].tolist())

    def __len__(self) -> int:
        return self.num_selected


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

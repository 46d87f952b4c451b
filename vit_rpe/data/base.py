"""The datamodule base: uint8 images in memory, batches gathered at once, transforms on device."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.data import suggested_max_num_workers
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, default_collate

from vit_rpe.data.augment import (
    RandAugmentImages,
    RandomErasingBatch,
    RepeatedAugmentationSampler,
    build_mixup,
)
from vit_rpe.data.resumable import ResumableDataLoader
from vit_rpe.data.splits import stratified_subset
from vit_rpe.data.transforms import DeviceTransform
from vit_rpe.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# uint8 images [N, C, H, W] (or a Dataset yielding uint8 [C, H, W] when too big for memory), int64 labels [N]
Split = tuple[torch.Tensor | Dataset, torch.Tensor]


class TensorImageDataset(Dataset):
    """uint8 images and labels held in memory; a batch is one gather, not N item lookups."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Split:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> Split:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


class EpochShuffleSampler(RandomSampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the order an uninterrupted
    one would. Lightning calls ``set_epoch`` before every epoch; the training loader draws the
    order only after that (see ResumableDataLoader). Under DDP Lightning swaps in a
    DistributedSampler (seed = the global seed), which splits this same order across the ranks."""

    def __init__(self, data_source, seed: int):
        super().__init__(data_source, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


def collate_gathered(batch):
    """A batch from ``__getitems__`` is already stacked; anything else is collated as usual."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch
    return default_collate(batch)


class ImageDataModule(L.LightningDataModule):
    """Base class: a subclass reads its format into uint8 splits with ``load_splits``.

    Everything after reading is shared: batching from memory, the device-side transform
    (``on_after_batch_transfer``), and the metadata models are built from (``image_size``,
    ``in_chans``, ``num_classes``, ``class_names``).

    Options shared by every dataset: ``num_workers`` loader processes, or ``auto`` (see
    ``loader_workers``); ``on_device`` moves the uint8 splits to the accelerator once
    and gathers batches there; ``randaugment`` (a timm config string, e.g. ``rand-m9-mstd0.5``)
    augments training images one by one on the CPU, in the loader workers; ``mixup`` / ``cutmix``
    (alphas, 0 = off) mix whole device batches with timm's Mixup into soft targets.
    """

    native_size: tuple[int, int]
    default_in_chans: int
    default_num_classes: int
    default_mean: Sequence[float]
    default_std: Sequence[float]

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        image_size: int | None = None,
        in_chans: int | None = None,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 0,
        hflip: float = 0.0,
        seed: int = 0,
        pin_memory: bool | None = None,
        on_device: bool = False,
        randaugment: str | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mix_prob: float = 1.0,
        random_erasing: float = 0.0,
        repeated_augmentation: int = 1,
        train_fraction: float = 1.0,
    ):
        super().__init__()
        self.record_hyperparameters()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        if not 0.0 < train_fraction <= 1.0:
            raise ConfigError(
                f"data.train_fraction={train_fraction} is outside (0, 1]: give the share of the training "
                "split to train on, e.g. data.train_fraction=0.1 (1 trains on all of it)"
            )
        self.train_fraction = train_fraction
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        if image_size is None and not hasattr(self, "native_size"):
            raise ConfigError(
                f"data.image_size is null and {type(self).__name__} has no size of its own: give the side "
                "in pixels images are resized to, e.g. data.image_size=64"
            )
        self.image_size = image_size or self.native_size[0]
        self.in_chans = in_chans or self.default_in_chans
        self.num_classes = num_classes or self.default_num_classes
        self.seed = seed
        self.pin_memory = pin_memory
        self.check_metadata(in_chans, num_classes)
        self.transform = DeviceTransform(
            mean or self.default_mean,
            std or self.default_std,
            image_size=self.image_size,
            crop_padding=crop_padding,
            hflip=hflip,
        )
        self.splits: dict[str, Split] = {}
        self.on_device = on_device
        self.randaugment = randaugment
        self.mixup = build_mixup(mixup, cutmix, mix_prob, self.num_classes)
        self.random_erasing = RandomErasingBatch(random_erasing) if random_erasing > 0 else None
        if repeated_augmentation < 1:
            raise ConfigError(
                f"data.repeated_augmentation={repeated_augmentation} must be at least 1 (1 = off)"
            )
        self.repeated_augmentation = repeated_augmentation

    def record_hyperparameters(self) -> None:
        """The constructor's arguments (a subclass's too) and ``_target_``, as plain values: Lightning
        stores them in checkpoints (``datamodule_hyper_parameters``), and eval rebuilds the data from
        them. Not logged: the run's loggers get the whole config."""
        self.save_hyperparameters(
            ignore=["args", "kwargs"], frame=inspect.currentframe().f_back, logger=False
        )
        for key, value in list(self.hparams.items()):
            if isinstance(value, (DictConfig, ListConfig)):
                self.hparams[key] = OmegaConf.to_container(value, resolve=True)
            elif isinstance(value, (Path, tuple)):
                self.hparams[key] = str(value) if isinstance(value, Path) else list(value)
        self.hparams["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def check_metadata(self, in_chans: int | None, num_classes: int | None) -> None:
        """Configs repeat the dataset's shape so models can interpolate it: it must agree."""
        for key, given, actual in (
            ("in_chans", in_chans, self.default_in_chans),
            ("num_classes", num_classes, self.default_num_classes),
        ):
            if given is not None and given != actual:
                raise ConfigError(f"data.{key}={given} but this dataset has {actual}: remove the override")

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]

    @property
    def data_config(self) -> dict[str, Any]:
        """What the device transform produces, in timm's words: ``input_size`` (C, H, W), mean, std."""
        return {
            "input_size": (self.in_chans, *self.transform.image_size),
            "mean": tuple(self.transform.mean.flatten().tolist()),
            "std": tuple(self.transform.std.flatten().tolist()),
        }

    @property
    def input_config(self) -> dict[str, Any]:
        """What a trained model needs to classify new image files as it saw this data (the
        classifier stores it in its checkpoints, for ``python -m vit_rpe.predict``): the class
        names, the channels, the side a file is cropped and resized to before the device transform
        (``decode_size``, as the format's reader does) and the transform's size and normalisation."""
        decode = getattr(self, "decode_size", None) or getattr(self, "native_size", None) or self.image_size
        decode = [decode, decode] if isinstance(decode, int) else [int(s) for s in decode]
        size = self.transform.image_size or tuple(decode)
        return {
            "class_names": [str(name) for name in self.class_names],
            "in_chans": int(self.in_chans),
            "decode_size": decode,
            **self.data_config,
            "image_size": [int(s) for s in size],
        }

    def apply_data_config(self, config: Mapping[str, Any] | None) -> None:
        """Resize and normalise as a backbone expects: a pretrained one states its checkpoint's
        ``input_size`` (C, H, W) and ``mean``/``std`` (its ``data_config()``, models/backbone.py;
        a key absent or None keeps this datamodule's).

        The model hands its needs over as plain values, so the datamodule never knows the model.
        """
        config = config or {}
        if config.get("input_size") is not None:
            size = tuple(int(s) for s in config["input_size"][-2:])
            if self.transform.image_size != size:
                log.info("images resized on the device to %s, the backbone's input size", size)
            self.transform.image_size = size
            self.image_size = size[0] if size[0] == size[1] else size
        if config.get("mean") is not None:
            log.info(
                "normalisation of the pretrained checkpoint: mean %s std %s", config["mean"], config["std"]
            )
            self.transform.mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
            self.transform.std = torch.tensor(config["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def load_splits(self) -> dict[str, Split]:
        """Read the dataset: {'train', 'val', 'test'} -> (uint8 images, int64 labels)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()
            if self.train_fraction < 1.0:
                self.splits["train"] = self.train_subset(*self.splits["train"])
            if self.on_device and self.trainer is not None:
                self.to_device(self.trainer.strategy.root_device)
        if self.trainer is not None and self.transform.generator is None:  # each rank augments differently
            generator = torch.Generator(self.trainer.strategy.root_device)
            self.transform.generator = generator.manual_seed(self.seed + self.trainer.global_rank)

    def train_subset(self, images: torch.Tensor | Dataset, labels: torch.Tensor) -> Split:
        """``train_fraction`` of every class of the training split, the same for the same seed."""
        index = stratified_subset(labels, self.train_fraction, seed=self.seed)
        if len(index) == 0:
            raise DataError(
                f"data.train_fraction={self.train_fraction} leaves no training image of the "
                f"{len(labels)}: raise it"
            )
        log.info(
            "data.train_fraction=%s: training on %d of %d images",
            self.train_fraction,
            len(index),
            len(labels),
        )
        images = images[index] if isinstance(images, torch.Tensor) else Subset(images, index.tolist())
        return images, labels[index]

    def to_device(self, device: torch.device | str) -> None:
        """Move the in-memory uint8 splits to ``device`` once: batches are then gathered there."""
        device = torch.device(device)
        if device.type == "cpu":
            return
        self.setup()
        for name, (images, labels) in self.splits.items():
            if not isinstance(images, torch.Tensor):
                log.warning("data.on_device: the %s split is decoded on the fly and stays on the CPU", name)
            elif name == "train" and self.randaugment:
                log.warning("data.randaugment works on the CPU: the training split stays in host memory")
            else:
                self.splits[name] = (images.to(device), labels.to(device))

    def split(self, name: str) -> Dataset:
        self.setup()
        images, labels = self.splits[name]
        dataset = TensorImageDataset(images, labels) if isinstance(images, torch.Tensor) else images
        if name == "train" and self.randaugment:
            dataset = RandAugmentImages(dataset, self.randaugment)
        return dataset

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.split(name)
        on_device = isinstance(dataset, TensorImageDataset) and dataset.images.device.type != "cpu"
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        workers = 0 if on_device else self.loader_workers(dataset)
        loader = ResumableDataLoader if name == "train" else DataLoader  # training resumes mid-epoch
        return loader(
            dataset,
            batch_size=self.batch_size if name == "train" else self.eval_batch_size,
            sampler=self.train_sampler(dataset) if shuffle else None,
            num_workers=workers,
            pin_memory=pin and not on_device,
            collate_fn=collate_gathered,
            persistent_workers=workers > 0,
            # its own generator: making an iterator draws a worker seed, which must not move the global RNG
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_sampler(self, dataset):
        if self.repeated_augmentation == 1:
            return EpochShuffleSampler(dataset, self.seed)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return RepeatedAugmentationSampler(dataset, self.seed, self.repeated_augmentation, world, rank)

    def loader_workers(self, dataset: Dataset) -> int:
        """``data.num_workers``, or for ``auto``: none when a batch is one gather from memory
        (TensorImageDataset: workers would only copy batches between processes), else Lightning's
        suggestion for per-image CPU work (RandAugment, decoding): the CPUs this process may use
        (its affinity, as SLURM or a container set it), less one, shared by this machine's ranks."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        if isinstance(dataset, TensorImageDataset):
            return 0
        ranks = self.trainer.num_devices if self.trainer is not None else 1
        return suggested_max_num_workers(ranks)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        images = self.transform(images, train=training)
        if training and self.random_erasing is not None:
            images = self.random_erasing(images)
        if training and self.mixup is not None:
            images, labels = self.mixup(images, labels)
        return images, labels

"""The datamodule base: uint8 images in memory, batches gathered at once, transforms on device."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from vit_rpe.data.transforms import DeviceTransform
from vit_rpe.utils.errors import ConfigError

Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, C, H, W], int64 labels [N]


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
        num_workers: int = 0,
        image_size: int | None = None,
        in_chans: int | None = None,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 0,
        hflip: float = 0.0,
        seed: int = 0,
        pin_memory: bool | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
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

    def load_splits(self) -> dict[str, Split]:
        """Read the dataset: {'train', 'val', 'test'} -> (uint8 images, int64 labels)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()

    def split(self, name: str) -> TensorImageDataset:
        self.setup()
        return TensorImageDataset(*self.splits[name])

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            self.split(name),
            batch_size=self.batch_size if name == "train" else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=pin,
            collate_fn=collate_gathered,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

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
        return self.transform(images, train=training), labels


def stratified_split(labels: torch.Tensor, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Index sets with the given fractions of every class, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        bounds = torch.tensor([0.0, *fractions]).cumsum(0) * len(members)
        bounds = bounds.round().long().tolist()
        for i in range(len(fractions)):
            parts[i].append(members[bounds[i] : bounds[i + 1]])
    return [torch.cat(p).sort().values for p in parts]

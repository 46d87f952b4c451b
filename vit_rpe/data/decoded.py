"""Formats of encoded images (JPEG/PNG files, parquet rows, pickled pixels), decoded once.

A reader describes its source cheaply (``describe_source``: file names, sizes, mtimes) and reads
it (``read_sources``: labels plus the images as pixels or as encoded items). The datamodule
decodes everything once into the uint8 cache (vit_rpe/data/cache.py) and trains from memory; a
dataset bigger than ``max_cache_gb`` is decoded on the fly by DataLoader workers instead, still
as uint8 tensors, so the device-side transform is the same either way. Validation (and test, when
the format has none) is carved from the training split, stratified by class: test with a fixed
seed, the same for every run, and validation with the run's seed (``carve_splits``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset

from vit_rpe.data.base import ImageDataModule, Split, carve_splits
from vit_rpe.data.cache import cache_key, load_cache, write_cache
from vit_rpe.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Source:
    """One split as the format stores it: labels, and pixels or encoded items to decode."""

    labels: np.ndarray  # int64 [N]
    images: np.ndarray | None = None  # uint8 [N, C, H, W] when the format stores pixels
    items: Sequence | None = None  # else: paths, bytes, PIL images or {"bytes", "path"} dicts

    def __len__(self) -> int:
        return len(self.labels)


def decode_image(item, size: int, in_chans: int) -> np.ndarray:
    """An encoded image -> uint8 [C, size, size]: centre crop to a square, then resize."""
    name = item.get("path") if isinstance(item, dict) else item if isinstance(item, (str, Path)) else None
    try:
        if isinstance(item, dict):
            item = item["bytes"] if item.get("bytes") is not None else item["path"]
        image = (
            item
            if isinstance(item, Image.Image)
            else Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
        )
        image = image.convert("L" if in_chans == 1 else "RGB")
        if image.size != (size, size):
            image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        where = f"the image file {name}" if name else "an image"
        raise DataError(f"{where} cannot be decoded ({err}): replace or delete it") from err
    array = np.array(image, dtype=np.uint8)  # a writable copy
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class DecodedImages(Dataset):
    """Decodes item ``i`` of a source on demand: the path for data too big to cache."""

    def __init__(self, source: Source, size: int, in_chans: int):
        self.source = source
        self.size = size
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source.images is not None:
            pixels = self.source.images[index]
        else:
            pixels = decode_image(self.source.items[index], self.size, self.in_chans)
        return torch.from_numpy(np.ascontiguousarray(pixels)), torch.tensor(int(self.source.labels[index]))


def split_fraction(value: float, total: int, key: str) -> float:
    """``data.val_size`` / ``data.test_size``: a fraction (< 1) or a number of images (>= 1)."""
    fraction = value / total if value >= 1 else value
    if not 0 < fraction < 1:
        raise ConfigError(f"data.{key}={value} must be a fraction in (0, 1) or a count below {total}")
    return fraction


class DecodedImageDataModule(ImageDataModule):
    """Base of the readers of encoded formats: cache, streaming fallback and split carving.

    ``decode_size`` is the side of the cached images (default: the format's native size, else
    ``image_size``); the device transform resizes to ``image_size`` afterwards, so a model at 224
    can train from a 64-pixel cache. ``max_cache_gb`` bounds the decoded bytes kept in memory.
    """

    cache_name = "images"

    def __init__(
        self,
        *args,
        val_size: float = 0.1,
        test_size: float = 0.1,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        max_cache_gb: float = 8.0,
        decode_size: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.val_size = val_size
        self.test_size = test_size
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "cache"
        self.max_cache_gb = max_cache_gb
        native = getattr(self, "native_size", None)
        self.decode_size = decode_size or (native[0] if native else self.image_size)

    # --- what a format implements -------------------------------------------------------
    def describe_source(self) -> dict:
        """A cheap description that changes whenever the data do (raise DataError if absent)."""
        raise NotImplementedError

    def read_sources(self) -> dict[str, Source]:
        """The splits the format stores: 'train', and 'test' / 'val' where it has them."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    def cache_folder(self) -> Path:
        description = {
            "format": type(self).__name__,
            "source": self.describe_source(),
            "decode_size": self.decode_size,
            "in_chans": self.in_chans,
            "version": 1,
        }
        return self.cache_dir / f"{self.cache_name}-{cache_key(description)}"

    def decoded(self) -> dict[str, tuple[torch.Tensor | Dataset, torch.Tensor]]:
        """Each stored split as uint8 tensors (cached) or a decoding Dataset (too big)."""
        folder = self.cache_folder() if self.cache else None
        arrays = load_cache(folder) if folder is not None else None
        if arrays is not None:
            log.info("reading the decoded cache %s", folder)
        else:
            sources = self.read_sources()
            shapes = {
                s: (len(src), self.in_chans, self.decode_size, self.decode_size) for s, src in sources.items()
            }
            nbytes = sum(int(np.prod(shape)) for shape in shapes.values())
            if nbytes > self.max_cache_gb * 2**30:
                log.warning(
                    "%s decodes to %.1f GB > data.max_cache_gb=%s: decoding on the fly in "
                    "data.num_workers=%s workers",
                    self.cache_name,
                    nbytes / 2**30,
                    self.max_cache_gb,
                    self.num_workers,
                )
                return {
                    s: (
                        DecodedImages(src, self.decode_size, self.in_chans),
                        torch.from_numpy(src.labels).long(),
                    )
                    for s, src in sources.items()
                }
            arrays = self.decode_all(sources, shapes, folder)
        return {
            s: (torch.from_numpy(x), torch.from_numpy(np.asarray(y)).long()) for s, (x, y) in arrays.items()
        }

    def decode_all(self, sources: dict[str, Source], shapes: dict, folder: Path | None):
        """Decode every split into arrays: into the cache folder, or into memory if caching is off."""

        def fill(split: str, images: np.ndarray, labels: np.ndarray) -> None:
            source = sources[split]
            labels[:] = source.labels
            if source.images is not None:
                images[:] = source.images
                return
            log.info("decoding %d %s images of %s", len(source), split, self.cache_name)
            decoded = DecodedImages(source, self.decode_size, self.in_chans)
            loader = DataLoader(decoded, batch_size=256, num_workers=self.loader_workers(decoded))
            start = 0
            try:
                for batch, _ in loader:
                    images[start : start + len(batch)] = batch.numpy()
                    start += len(batch)
            except DataError as err:  # from a worker: keep the message, drop the worker's traceback
                raise DataError(str(err).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None

        if folder is None:
            arrays = {}
            for split, shape in shapes.items():
                images, labels = np.empty(shape, np.uint8), np.empty(shape[0], np.int64)
                fill(split, images, labels)
                arrays[split] = (images, labels)
            return arrays
        return write_cache(
            folder, shapes, fill, meta={"format": type(self).__name__, "class_names": self.class_names}
        )

    def load_splits(self) -> dict[str, Split | Dataset]:
        stored = self.decoded()
        images, labels = stored["train"]
        held_out = {
            name: split_fraction(getattr(self, f"{name}_size"), len(labels), f"{name}_size")
            for name in ("val", "test")
            if name not in stored
        }
        if sum(held_out.values()) >= 1:
            raise ConfigError(f"data.val_size and data.test_size leave no training images ({held_out})")
        parts = carve_splits(labels, held_out.get("val"), held_out.get("test"), seed=self.seed)
        splits = {k: v for k, v in stored.items() if k != "train"}
        for name, index in parts.items():
            if len(index) == 0:
                raise DataError(
                    f"the {name} split of {self.cache_name} is empty (each class gives it a rounded share): "
                    f"raise data.{name}_size or add images"
                )
            if isinstance(images, torch.Tensor):
                splits[name] = (images[index], labels[index])
            else:
                splits[name] = (Subset(images, index.tolist()), labels[index])
        return {name: splits[name] for name in ("train", "val", "test")}

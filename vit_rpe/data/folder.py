"""Any tree of images, one folder per class: ``data_dir/<class>/**/*.{jpg,jpeg,png,...}``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vit_rpe.data.cache import file_fingerprint
from vit_rpe.data.decoded import IMAGE_EXTENSIONS, DecodedImageDataModule, Source
from vit_rpe.data.hf import IMAGENET_MEAN, IMAGENET_STD
from vit_rpe.utils.errors import DataError


def class_folders(root: Path) -> list[str]:
    """Sorted class folder names (hidden and ``_``-prefixed folders, like the cache, are skipped)."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist. {FolderLayout.hint}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    if not classes:
        raise DataError(f"{root} has no class folders. {FolderLayout.hint}")
    return classes


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted (os.walk: much faster than Path.rglob)."""
    found = []
    for parent, _, names in os.walk(folder):
        found += [
            os.path.join(parent, n) for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
        ]
    return [Path(p) for p in sorted(found)]


class FolderLayout:
    hint = (
        "Expected one folder per class with its images inside: <data_dir>/<class name>/*.jpg "
        f"(any of {', '.join(IMAGE_EXTENSIONS)}); set data.data_dir to the folder above the class folders"
    )


class ImageFolderDataModule(DecodedImageDataModule):
    """Class names are the folder names, in sorted order. Validation (and test, unless ``test_dir``
    holds a separate tree with the same class folders) are stratified fractions of the images:
    test the same for every seed, validation seeded (``carve_splits``).

    The cache lives in ``data_dir/.cache`` so it is never mistaken for a class.
    """

    cache_name = "image_folder"
    default_mean = IMAGENET_MEAN
    default_std = IMAGENET_STD

    def __init__(
        self,
        data_dir: str | Path = "data",
        *,
        test_dir: str | Path | None = None,
        image_size: int = 64,
        in_chans: int = 3,
        cache_dir: str | Path | None = None,
        **kwargs,
    ):
        self.classes = class_folders(Path(data_dir))
        if len(self.classes) < 2:
            raise DataError(
                f"{data_dir} has one class folder ({self.classes[0]}): a classifier needs at least two. "
                f"{FolderLayout.hint}"
            )
        self.test_dir = Path(test_dir) if test_dir else None
        self.default_in_chans = in_chans
        self.default_num_classes = len(self.classes)
        self._scan: dict[str, tuple[list[Path], np.ndarray]] | None = None
        super().__init__(
            data_dir,
            image_size=image_size,
            in_chans=in_chans,
            cache_dir=cache_dir or Path(data_dir) / ".cache",
            **kwargs,
        )
        self.scan()  # listed once, now: a bad layout is reported before a Trainer starts

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def scan(self) -> dict[str, tuple[list[Path], np.ndarray]]:
        """Image paths and labels of the training tree and, if given, the test tree (listed once)."""
        if self._scan is None:
            roots = {"train": self.data_dir, **({"test": self.test_dir} if self.test_dir else {})}
            self._scan = {}
            for split, root in roots.items():
                if split == "test" and (extra := sorted(set(class_folders(root)) - set(self.classes))):
                    raise DataError(f"test folder {root} has classes missing from {self.data_dir}: {extra}")
                paths, labels, empty = [], [], []
                for label, name in enumerate(self.classes):
                    files = image_files(root / name)
                    paths += files
                    labels += [label] * len(files)
                    empty += [] if files else [name]
                if split == "train" and empty and len(empty) < len(self.classes):
                    # an empty folder would still be a class: an output the model never sees trained
                    raise DataError(
                        f"class folders without images in {root}: {', '.join(empty)}. Each folder is a "
                        "class, so these would be classes never trained: add their images "
                        f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folders"
                    )
                if not paths:
                    raise DataError(f"no images under {root}. {FolderLayout.hint}")
                self._scan[split] = (paths, np.asarray(labels, dtype=np.int64))
        return self._scan

    def describe_source(self) -> dict:
        return {
            split: file_fingerprint(paths, root=self.data_dir if split == "train" else self.test_dir)
            for split, (paths, _) in self.scan().items()
        }

    def read_sources(self) -> dict[str, Source]:
        return {
            split: Source(labels=labels, items=[str(p) for p in paths])
            for split, (paths, labels) in self.scan().items()
        }

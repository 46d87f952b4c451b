"""CIFAR-10 and CIFAR-100 from the official python pickle batches, downloaded when absent.

Both come from https://www.cs.toronto.edu/~kriz/cifar.html in the same format (pickled dicts with
bytes keys, uint8 rows of 3072 channel-planar pixels); they differ only in file names and label
keys, which the two datamodules declare as class attributes.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from vit_rpe.data.cache import file_fingerprint
from vit_rpe.data.decoded import DecodedImageDataModule, Source
from vit_rpe.data.download import download, extract_tar
from vit_rpe.utils.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One pickled batch: a dict with bytes keys (the files were written by Python 2)."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is truncated or corrupt ({err}): delete it and download it again") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch (a pickled dict): delete it and download it again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def read_images(
    path: Path, label_key: str = "labels", num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 3, 32, 32] images and int64 labels (``label_key``) of one batch file."""
    batch = read_batch(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path} lacks the keys b'data' and b'{label_key}' of a CIFAR batch: replace it")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.size != len(labels) * 3072:
        raise DataError(
            f"{path}: data {data.dtype} {data.shape} is not uint8 [{len(labels)}, 3072]: "
            "delete it and download it again"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: {label_key} outside 0..{num_classes - 1}: this is not the dataset expected")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10DataModule(DecodedImageDataModule):
    """CIFAR-10 32x32: 50k training images (``val_size`` of them held out, seeded) and the 10k test set."""

    cache_name = "cifar10"
    native_size = (32, 32)
    default_in_chans = 3
    default_num_classes = 10
    default_mean = (0.4914, 0.4822, 0.4465)
    default_std = (0.2470, 0.2435, 0.2616)
    # the published archive and its layout
    title = "CIFAR-10"
    url = CIFAR10_URL
    md5 = CIFAR10_MD5
    folder_name = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    fallback_names = CIFAR10_CLASSES

    def __init__(self, *args, val_size: float = 5000, download: bool = True, **kwargs):
        super().__init__(*args, val_size=val_size, **kwargs)
        self.download = download

    @property
    def folder(self) -> Path:
        """``data_dir/<folder_name>``, or ``data_dir`` itself when it holds the batches."""
        holds_batches = (self.data_dir / self.test_files[0]).is_file()
        if holds_batches and not (self.data_dir / self.folder_name).exists():
            return self.data_dir
        return self.data_dir / self.folder_name

    @property
    def layout(self) -> str:
        files = ", ".join((*self.train_files, *self.test_files, self.meta_file))
        return f"{self.folder_name}/ with {files} (the python version, {self.url})"

    @property
    def class_names(self) -> list[str]:
        meta = self.folder / self.meta_file
        if meta.is_file():
            names = read_batch(meta).get(self.names_key)
            if names is not None and len(names) == self.default_num_classes:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if self.fallback_names:
            return list(self.fallback_names)
        return [str(i) for i in range(self.default_num_classes)]

    def files(self) -> list[Path]:
        return [self.folder / name for name in (*self.train_files, *self.test_files)]

    def prepare_data(self) -> None:
        missing = [p.name for p in self.files() if not p.is_file()]
        if not missing:
            return
        where = f"Expected {self.data_dir}/{self.layout}; or set data.data_dir to the folder that holds it"
        if not self.download or self.folder.exists():
            raise DataError(f"{self.title} files missing in {self.folder}: {', '.join(missing)}. {where}.")
        archive = self.data_dir / Path(self.url).name
        try:
            if not archive.is_file():
                download([self.url], archive, self.md5)
        except DataError as err:
            raise DataError(f"{self.title} is missing and the download failed ({err}).\n{where}.") from err
        extract_tar(archive, self.data_dir, self.folder_name)
        archive.unlink()

    def describe_source(self) -> dict:
        self.prepare_data()
        return {"files": file_fingerprint(self.files(), root=self.folder)}

    def read_sources(self) -> dict[str, Source]:
        sources = {}
        for split, names in (("train", self.train_files), ("test", self.test_files)):
            parts = [
                read_images(self.folder / name, self.label_key, self.default_num_classes) for name in names
            ]
            images = np.concatenate([p[0] for p in parts])
            sources[split] = Source(labels=np.concatenate([p[1] for p in parts]), images=images)
        return sources


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 32x32, the same format: 100 fine classes, or the 20 superclasses with
    ``labels="coarse"``; 50k training images (``val_size`` held out, seeded) and the 10k test set."""

    cache_name = "cifar100"
    default_num_classes = 100
    default_mean = (0.5071, 0.4865, 0.4409)
    default_std = (0.2673, 0.2564, 0.2762)
    title = "CIFAR-100"
    url = CIFAR100_URL
    md5 = CIFAR100_MD5
    folder_name = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    fallback_names = ()

    def __init__(self, *args, labels: str = "fine", **kwargs):
        if labels not in ("fine", "coarse"):
            raise DataError(
                f"data.labels={labels!r}: CIFAR-100 has 'fine' (100 classes) or 'coarse' (20) labels"
            )
        self.labels = labels
        if labels == "coarse":
            self.cache_name = "cifar100_coarse"
            self.default_num_classes = 20
        self.label_key = f"{labels}_labels"
        self.names_key = f"{labels}_label_names"
        super().__init__(*args, **kwargs)

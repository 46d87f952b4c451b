"""CIFAR-10 from the official python pickle batches (``cifar-10-batches-py/``), downloaded when absent."""

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
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
LAYOUT = (
    f"{CIFAR10_FOLDER}/ with data_batch_1 ... data_batch_5, test_batch and batches.meta "
    f"(the python version, {CIFAR10_URL})"
)


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


def read_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 3, 32, 32] images and int64 labels of one batch file."""
    batch = read_batch(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} lacks the keys b'data' and b'labels' of a CIFAR-10 batch: replace it")
    labels = np.asarray(batch["labels"], dtype=np.int64)
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.size != len(labels) * 3072:
        raise DataError(
            f"{path}: data {data.dtype} {data.shape} is not uint8 [{len(labels)}, 3072]: "
            "delete it and download it again"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9: this is not CIFAR-10")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10DataModule(DecodedImageDataModule):
    """CIFAR-10 32x32: 50k training images (``val_size`` of them held out, seeded) and the 10k test set."""

    cache_name = "cifar10"
    native_size = (32, 32)
    default_in_chans = 3
    default_num_classes = 10
    default_mean = (0.4914, 0.4822, 0.4465)
    default_std = (0.2470, 0.2435, 0.2616)

    def __init__(self, *args, val_size: float = 5000, download: bool = True, **kwargs):
        super().__init__(*args, val_size=val_size, **kwargs)
        self.download = download

    @property
    def folder(self) -> Path:
        """``data_dir/cifar-10-batches-py``, or ``data_dir`` itself when it holds the batches."""
        if (self.data_dir / "test_batch").is_file() and not (self.data_dir / CIFAR10_FOLDER).exists():
            return self.data_dir
        return self.data_dir / CIFAR10_FOLDER

    @property
    def class_names(self) -> list[str]:
        meta = self.folder / "batches.meta"
        if meta.is_file():
            names = read_batch(meta).get("label_names")
            if names is not None and len(names) == 10:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        return list(CIFAR10_CLASSES)

    def files(self) -> list[Path]:
        return [self.folder / name for name in (*CIFAR10_TRAIN, *CIFAR10_TEST)]

    def prepare_data(self) -> None:
        missing = [p.name for p in self.files() if not p.is_file()]
        if not missing:
            return
        where = f"Expected {self.data_dir}/{LAYOUT}; or set data.data_dir to the folder that holds it"
        if not self.download or self.folder.exists():
            raise DataError(f"CIFAR-10 files missing in {self.folder}: {', '.join(missing)}. {where}.")
        archive = self.data_dir / "cifar-10-python.tar.gz"
        try:
            if not archive.is_file():
                download([CIFAR10_URL], archive, CIFAR10_MD5)
        except DataError as err:
            raise DataError(f"CIFAR-10 is missing and the download failed ({err}).\n{where}.") from err
        extract_tar(archive, self.data_dir, CIFAR10_FOLDER)
        archive.unlink()

    def describe_source(self) -> dict:
        self.prepare_data()
        return {"files": file_fingerprint(self.files(), root=self.folder)}

    def read_sources(self) -> dict[str, Source]:
        sources = {}
        for split, names in (("train", CIFAR10_TRAIN), ("test", CIFAR10_TEST)):
            parts = [read_images(self.folder / name) for name in names]
            images = np.concatenate([p[0] for p in parts])
            sources[split] = Source(labels=np.concatenate([p[1] for p in parts]), images=images)
        return sources

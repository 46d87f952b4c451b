"""MNIST from the official IDX files, and scikit-learn's bundled 8x8 digits."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from vit_rpe.data.base import ImageDataModule, Split, carve_splits, stratified_split
from vit_rpe.data.download import download
from vit_rpe.utils.errors import DataError

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_FILES = {  # name -> md5 of the published .gz
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into an array of the shape its header declares."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is corrupt ({err}): delete it and download it again") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number): delete it and download it again")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: {len(raw)} bytes, its header promises {expected}; "
            "delete it and download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)


def find_mnist_file(data_dir: Path, name: str) -> Path | None:
    """The file in ``data_dir`` or torchvision's ``data_dir/MNIST/raw``, gzipped or not."""
    for folder in (data_dir, data_dir / "MNIST" / "raw"):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


class MNISTDataModule(ImageDataModule):
    """MNIST 28x28: 60k training images (about ``val_size`` of them held out, stratified, seeded)
    and the 10k test set."""

    native_size = (28, 28)
    default_in_chans = 1
    default_num_classes = 10
    default_mean = (0.1307,)
    default_std = (0.3081,)

    def __init__(self, *args, val_size: int = 5000, download: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_size = val_size
        self.download = download
        if not download:  # nothing will fetch them: say so before a Trainer starts
            self.prepare_data()

    def prepare_data(self) -> None:
        missing = [name for name in MNIST_FILES if find_mnist_file(self.data_dir, name) is None]
        if not missing:
            return
        where = (
            f"Put the four files {', '.join(n + '.gz' for n in MNIST_FILES)} in {self.data_dir} "
            f"(or {self.data_dir / 'MNIST' / 'raw'}), or set data.data_dir to the folder that has them"
        )
        if not any(name.startswith("t10k") for name in missing):  # the test files alone are there
            where = (
                f"Only the test files are in {self.data_dir}: make a training set of real digits from "
                f"them with python -m vit_rpe.data.mnist_subset {self.data_dir} data/mnist_8k and train "
                "with data.data_dir=data/mnist_8k (8,000 train, 2,000 test images). Or: "
                f"{where[0].lower()}{where[1:]}"
            )
        if not self.download:
            raise DataError(f"MNIST files missing: {', '.join(missing)}. {where}.")
        for name in missing:
            try:
                download(
                    [m + name + ".gz" for m in MNIST_MIRRORS], self.data_dir / f"{name}.gz", MNIST_FILES[name]
                )
            except DataError as err:
                raise DataError(
                    f"MNIST file {name}.gz is missing and the download failed ({err}).\n{where}."
                ) from err

    def load_splits(self) -> dict[str, Split]:
        self.prepare_data()
        arrays = {name: read_idx(find_mnist_file(self.data_dir, name)) for name in MNIST_FILES}
        for prefix in ("train", "t10k"):
            images, labels = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
            if images.ndim != 3 or len(images) != len(labels):
                raise DataError(
                    f"{prefix} images {images.shape} and labels {labels.shape} of MNIST in {self.data_dir} "
                    "do not match: replace the files"
                )
        train_x = torch.from_numpy(arrays["train-images-idx3-ubyte"].copy()).unsqueeze(1)
        train_y = torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64))
        if not 0 < self.val_size < len(train_y):
            raise DataError(f"data.val_size={self.val_size} must be between 1 and {len(train_y) - 1}")
        # Validation is a stratified share of the training file, drawn with the run's seed (each class
        # gives its rounded share, so about val_size images); the test file stays unseen.
        parts = carve_splits(train_y, val=self.val_size / len(train_y), test=None, seed=self.seed)
        train_idx, val_idx = parts["train"], parts["val"]
        if len(val_idx) == 0:
            raise DataError(f"data.val_size={self.val_size} gives no class a validation image: raise it")
        test_x = torch.from_numpy(arrays["t10k-images-idx3-ubyte"].copy()).unsqueeze(1)
        test_y = torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
        return {
            "train": (train_x[train_idx], train_y[train_idx]),
            "val": (train_x[val_idx], train_y[val_idx]),
            "test": (test_x, test_y),
        }


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 1,797 handwritten digits (8x8, 17 grey levels): no download at all.

    A fixed stratified split: 70% train, 15% validation, 15% test.
    """

    native_size = (8, 8)
    default_in_chans = 1
    default_num_classes = 10
    default_mean = (0.3050,)
    default_std = (0.3806,)
    fractions = (0.70, 0.15, 0.15)

    def load_splits(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        train, val, test = stratified_split(labels, self.fractions, seed=0)  # fixed for comparability
        return {
            name: (images[idx], labels[idx])
            for name, idx in zip(("train", "val", "test"), (train, val, test))
        }

"""SVHN cropped digits (``train_32x32.mat``, ``test_32x32.mat``, optional ``extra_32x32.mat``).

The published files are MATLAB v5 files, each with ``X`` as uint8 [32, 32, 3, N] and ``y`` as
[N, 1] labels 1..10, where 10 stands for the digit 0 (http://ufldl.stanford.edu/housenumbers/).
We read them with scipy.io.loadmat and map 10 to 0, so class i is digit i.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vit_rpe.data.cache import file_fingerprint
from vit_rpe.data.decoded import DecodedImageDataModule, Source
from vit_rpe.data.download import download
from vit_rpe.utils.errors import DataError

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
# the publisher's files and their MD5 checksums (as torchvision and tf.keras list them)
SVHN_FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 3, 32, 32] images and int64 labels 0..9 of one SVHN .mat file."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except (OSError, ValueError, TypeError, IndexError, KeyError, NotImplementedError) as err:
        raise DataError(f"{path} is truncated or corrupt ({err}): delete it and download it again") from err
    if "X" not in mat or "y" not in mat:
        raise DataError(
            f"{path} lacks the variables X and y of an SVHN file: delete it and download it again"
        )
    images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if images.dtype != np.uint8 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise DataError(f"{path}: X {images.dtype} {images.shape} is not uint8 [32, 32, 3, {len(labels)}]")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{path}: labels outside 1..10: this is not SVHN")
    return images.transpose(3, 2, 0, 1), labels % 10


class SVHNDataModule(DecodedImageDataModule):
    """SVHN 32x32 house-number digits: 73,257 training images (``val_size`` held out, seeded), 26,032
    test images; ``extra=true`` adds the 531,131 easier extra images to the training split."""

    cache_name = "svhn"
    native_size = (32, 32)
    default_in_chans = 3
    default_num_classes = 10
    default_mean = (0.4377, 0.4438, 0.4728)
    default_std = (0.1980, 0.2010, 0.1970)

    def __init__(self, *args, val_size: float = 5000, download: bool = True, extra: bool = False, **kwargs):
        self.extra = extra
        if extra:
            self.cache_name = "svhn_extra"
        super().__init__(*args, val_size=val_size, **kwargs)
        self.download = download

    @property
    def class_names(self) -> list[str]:
        return [str(digit) for digit in range(10)]

    def split_files(self) -> dict[str, list[str]]:
        train = ["train", "extra"] if self.extra else ["train"]
        return {"train": train, "test": ["test"]}

    def files(self) -> list[Path]:
        parts = [part for parts in self.split_files().values() for part in parts]
        return [self.data_dir / SVHN_FILES[part][0] for part in parts]

    def prepare_data(self) -> None:
        missing = [p for p in self.files() if not p.is_file()]
        if not missing:
            return
        names = ", ".join(p.name for p in missing)
        where = (
            f"Expected {self.data_dir}/ with {names} ({SVHN_URL}); "
            "or set data.data_dir to the folder that holds them"
        )
        if not self.download:
            raise DataError(f"SVHN files missing in {self.data_dir}: {names}. {where}.")
        md5s = {name: md5 for name, md5 in SVHN_FILES.values()}
        for path in missing:
            try:
                download([SVHN_URL + path.name], path, md5s[path.name])
            except DataError as err:
                raise DataError(
                    f"SVHN {path.name} is missing and the download failed ({err}).\n{where}."
                ) from err

    def describe_source(self) -> dict:
        self.prepare_data()
        return {"files": file_fingerprint(self.files(), root=self.data_dir)}

    def read_sources(self) -> dict[str, Source]:
        sources = {}
        for split, parts in self.split_files().items():
            read = [read_mat(self.data_dir / SVHN_FILES[part][0]) for part in parts]
            images = np.concatenate([r[0] for r in read])
            sources[split] = Source(labels=np.concatenate([r[1] for r in read]), images=images)
        return sources

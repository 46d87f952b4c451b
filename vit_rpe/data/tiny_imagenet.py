"""Tiny ImageNet (64x64, 200 classes): the original ``tiny-imagenet-200/`` folder or the HF hub copy.

The official test images are unlabelled, so the labelled official validation set (50 per class)
serves as our test set and validation is carved from the 100k training images (``val_size``,
stratified, seeded). Labels follow the sorted wnids in both sources: the hub copy's ClassLabel
lists them sorted (n01443537, n01629819, ...), as its imagefolder builder saw the train folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vit_rpe.data.cache import file_fingerprint
from vit_rpe.data.decoded import DecodedImageDataModule, Source
from vit_rpe.data.folder import image_files
from vit_rpe.data.hf import HFSource
from vit_rpe.utils.errors import ConfigError, DataError

FOLDER = "tiny-imagenet-200"
HUB_ID = "zh-plus/tiny-imagenet"
ZIP_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
LAYOUT = (
    f"{FOLDER}/ with wnids.txt, words.txt, train/<wnid>/images/*.JPEG and val/images/*.JPEG with "
    f"val/val_annotations.txt (unzip {ZIP_URL})"
)


class TinyImageNetDataModule(DecodedImageDataModule):
    """``source``: ``folder`` (``data_dir/tiny-imagenet-200`` or ``data_dir`` itself), ``hf``
    (``hf_path``: hub id or a local copy of the hub repo, splits train and valid) or ``auto``
    (the folder when it is there, else the hub). Class names: words.txt (first synonym) or wnids.
    """

    cache_name = "tiny_imagenet"
    native_size = (64, 64)
    default_in_chans = 3
    default_num_classes = 200
    default_mean = (0.4802, 0.4481, 0.3975)
    default_std = (0.2770, 0.2691, 0.2821)

    def __init__(
        self,
        data_dir: str | Path = "data",
        *,
        source: str = "auto",
        hf_path: str = HUB_ID,
        val_size: float = 10000,
        **kwargs,
    ):
        if source not in ("auto", "folder", "hf"):
            raise ConfigError(f"data.source={source!r}: use folder, hf or auto")
        data_dir = Path(data_dir)
        self.root = data_dir if (data_dir / "wnids.txt").is_file() else data_dir / FOLDER
        if source == "auto":
            source = "folder" if self.root.is_dir() else "hf"
        self.source = source
        self.hf = HFSource(hf_path, cache_dir=data_dir / "cache" / "hf") if source == "hf" else None
        self.wnids, self.names = self.read_classes()
        super().__init__(data_dir, val_size=val_size, **kwargs)

    def layout_error(self, problem: str) -> DataError:
        return DataError(
            f"Tiny ImageNet: {problem}. Expected {self.root.parent}/{LAYOUT}; or data.source=hf with "
            f"data.hf_path={HUB_ID} (network) or a local copy of that hub repo (data/train-*.parquet, "
            "data/valid-*.parquet)"
        )

    def read_classes(self) -> tuple[list[str], list[str]]:
        """Sorted wnids and their readable names, from wnids.txt/words.txt or the ClassLabel."""
        if self.hf is not None:
            try:
                names = self.hf.class_names()
            except DataError as err:
                raise self.layout_error(str(err)) from err
            if names is None or len(names) != 200:
                raise self.layout_error(f"{self.hf.hf_path} has no 200-name ClassLabel column 'label'")
            return names, names
        wnids_file = self.root / "wnids.txt"
        if not wnids_file.is_file():
            raise self.layout_error(f"{wnids_file} is missing")
        wnids = sorted(line.strip() for line in wnids_file.read_text().splitlines() if line.strip())
        if len(wnids) != 200 or len(set(wnids)) != 200:
            raise self.layout_error(f"{wnids_file} lists {len(set(wnids))} distinct wnids, not 200")
        words = {}
        if (self.root / "words.txt").is_file():
            for line in (self.root / "words.txt").read_text().splitlines():
                wnid, _, text = line.partition("\t")
                words[wnid.strip()] = text.split(",")[0].strip()
        return wnids, [words.get(w) or w for w in wnids]

    @property
    def class_names(self) -> list[str]:
        return list(self.names)

    def folder_files(self) -> dict[str, tuple[list[Path], np.ndarray]]:
        """train/<wnid>/images/*.JPEG and val/images/* labelled by val/val_annotations.txt."""
        index = {wnid: i for i, wnid in enumerate(self.wnids)}
        train_paths, train_labels = [], []
        for wnid in self.wnids:
            files = image_files(self.root / "train" / wnid / "images")
            if not files:
                raise self.layout_error(f"no images in {self.root / 'train' / wnid / 'images'}")
            train_paths += files
            train_labels += [index[wnid]] * len(files)
        annotations = self.root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise self.layout_error(f"{annotations} is missing")
        val_paths, val_labels = [], []
        for line in annotations.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in index:
                raise self.layout_error(f"{annotations} names {fields[1]}, which is not in wnids.txt")
            path = self.root / "val" / "images" / fields[0]
            if not path.is_file():
                raise self.layout_error(f"{path}, listed in {annotations.name}, is missing")
            val_paths.append(path)
            val_labels.append(index[fields[1]])
        return {
            "train": (train_paths, np.asarray(train_labels, dtype=np.int64)),
            "test": (val_paths, np.asarray(val_labels, dtype=np.int64)),
        }

    def describe_source(self) -> dict:
        if self.hf is not None:
            return {"hf": self.hf.describe(["train", "valid"])}
        if not hasattr(self, "_files"):
            self._files = self.folder_files()
        return {s: file_fingerprint(paths, root=self.root) for s, (paths, _) in self._files.items()}

    def read_sources(self) -> dict[str, Source]:
        if self.hf is not None:
            return {"train": self.hf.read("train"), "test": self.hf.read("valid")}
        if not hasattr(self, "_files"):
            self._files = self.folder_files()
        return {
            s: Source(labels=labels, items=[str(p) for p in paths])
            for s, (paths, labels) in self._files.items()
        }

"""Any HuggingFace image-classification dataset, by hub id or as a local copy of its repo.

A local folder is read the way the hub stores parquet datasets: ``<folder>/data/<split>-*.parquet``
(e.g. ``data/train-00000-of-00001.parquet``), with the features (the ClassLabel names) in the
parquet schema. Metadata come cheaply from the schema or the hub's dataset card; the rows are read
through the ``datasets`` library only when the decoded cache has to be built.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vit_rpe.data.cache import file_fingerprint
from vit_rpe.data.decoded import IMAGE_EXTENSIONS, DecodedImageDataModule, Source
from vit_rpe.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_files_below(folder: Path) -> bool:
    """Does ``folder`` (one level down) hold image files, as a class folder would?"""
    return any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.iterdir() if f.is_file())


class HFSource:
    """One HF dataset: its splits, features and rows, from the hub or a local parquet folder."""

    def __init__(
        self,
        hf_path: str | Path,
        name: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        cache_dir: Path | None = None,
        revision: str | None = None,
    ):
        self.hf_path = str(hf_path)
        self.name = name
        self.image_column = image_column
        self.label_column = label_column
        self.cache_dir = cache_dir
        self.revision = revision
        self.local = Path(hf_path) if Path(hf_path).is_dir() else None
        self._features = None
        self._loaded: dict = {}

    def layout_hint(self) -> str:
        """What to do, for a hub id, or for a local folder in another layout (named if known)."""
        expected = (
            "a local folder laid out like the hub repo: <folder>/data/train-*.parquet, "
            "<folder>/data/<other split>-*.parquet"
        )
        if self.local is None:
            return (
                f"With network, the hub dataset {self.hf_path!r} is downloaded on first use; offline, set "
                f"data.hf_path to {expected}"
            )
        if any((self.local / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            return (
                f"{self.local} was written by datasets' save_to_disk, a format data=hf does not read: "
                "write its splits as parquet (for name, split in datasets.load_from_disk(folder).items(): "
                "split.to_parquet(f'<new folder>/data/{name}-00000.parquet')) and set data.hf_path to "
                "the new folder"
            )
        if any(image_files_below(d) for d in self.local.iterdir() if d.is_dir() and d.name != "data"):
            return (
                f"{self.local} looks like a tree of images: use data=image_folder data.data_dir={self.local}"
            )
        return f"data=hf reads {expected}"

    def parquet_files(self, split: str) -> list[Path]:
        return sorted((self.local / "data").glob(f"{split}-*.parquet"))

    def split_names(self) -> list[str]:
        if self.local is not None:
            return sorted({p.name.split("-")[0] for p in (self.local / "data").glob("*.parquet")})
        return list(self.builder_info().splits or {})

    def builder_info(self):
        import datasets

        try:
            return datasets.load_dataset_builder(self.hf_path, self.name, revision=self.revision).info
        except Exception as err:
            raise DataError(
                f"could not open the HF dataset {self.hf_path!r} ({err}). {self.layout_hint()}."
            ) from err

    def features(self):
        """The dataset's features, read from a parquet schema or the hub's metadata (no rows)."""
        if self._features is None:
            if self.local is not None:
                import datasets
                import pyarrow.parquet as pq

                files = sorted((self.local / "data").glob("*.parquet"))
                if not files:
                    raise DataError(f"no parquet files in {self.local / 'data'}. {self.layout_hint()}.")
                try:
                    self._features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
                except Exception as err:
                    raise DataError(f"{files[0]} is not a readable parquet file ({err}): replace it") from err
            else:
                self._features = self.builder_info().features
            for column in (self.image_column, self.label_column):
                if self._features is None or column not in self._features:
                    found = list(self._features or {})
                    raise ConfigError(
                        f"the HF dataset {self.hf_path!r} has no column {column!r} (it has {found}): "
                        "set data.image_column / data.label_column"
                    )
        return self._features

    def class_names(self) -> list[str] | None:
        """The ClassLabel names of the label column; None when labels are plain integers."""
        feature = self.features()[self.label_column]
        return list(feature.names) if hasattr(feature, "names") else None

    def load(self, split: str):
        """The rows of one split as a ``datasets.Dataset`` with the images left encoded."""
        if split not in self._loaded:
            import datasets

            try:
                if self.local is not None:
                    files = self.parquet_files(split)
                    if not files:
                        raise DataError(f"no {self.local}/data/{split}-*.parquet. {self.layout_hint()}.")
                    ds = datasets.load_dataset(
                        "parquet",
                        data_files={split: [str(f) for f in files]},
                        split=split,
                        cache_dir=str(self.cache_dir) if self.cache_dir else None,
                    )
                else:
                    ds = datasets.load_dataset(self.hf_path, self.name, split=split, revision=self.revision)
            except DataError:
                raise
            except Exception as err:
                raise DataError(
                    f"could not load split {split!r} of the HF dataset {self.hf_path!r} ({err}). "
                    f"{self.layout_hint()}."
                ) from err
            if isinstance(ds.features.get(self.image_column), datasets.Image):
                ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
            self._loaded[split] = ds
        return self._loaded[split]

    def describe(self, splits: list[str]) -> dict:
        """Local files by name, size and mtime; a hub dataset by the fingerprint of its cached rows."""
        if self.local is not None:
            files = [f for split in splits for f in self.parquet_files(split)]
            return {
                "files": file_fingerprint(files, root=self.local),
                "columns": [self.image_column, self.label_column],
            }
        return {
            "hub": self.hf_path,
            "name": self.name,
            "fingerprints": [self.load(s)._fingerprint for s in splits],
        }

    def read(self, split: str) -> Source:
        ds = self.load(split)
        labels = np.asarray(ds.data.column(self.label_column).to_numpy(), dtype=np.int64)
        return Source(labels=labels, items=_Column(ds, self.image_column))


class _Column:
    """``items[i]`` = one encoded image of a datasets.Dataset (a {"bytes", "path"} dict)."""

    def __init__(self, ds, column: str):
        self.ds = ds
        self.column = column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        return self.ds[int(index)][self.column]


class HFImageDataModule(DecodedImageDataModule):
    """An HF image-classification dataset: ``hf_path`` (hub id, or a local copy; default ``data_dir``).

    Splits: ``train_split``; ``val_split`` / ``test_split`` where the dataset has them (null or
    absent: carved from train, stratified; a carved test split is the same for every seed).
    Images are decoded to ``decode_size`` (default ``image_size``) squares, centre-cropped, RGB
    (or greyscale with ``in_chans=1``).
    """

    cache_name = "hf"
    default_mean = IMAGENET_MEAN
    default_std = IMAGENET_STD

    def __init__(
        self,
        data_dir: str | Path = "data",
        *,
        hf_path: str | None = None,
        hf_name: str | None = None,
        revision: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = "test",
        image_size: int = 64,
        in_chans: int = 3,
        num_classes: int | None = None,
        **kwargs,
    ):
        if hf_path is None and not Path(data_dir).is_dir():
            raise DataError(
                f"data.hf_path is not set and data.data_dir={data_dir} is no local copy of an HF dataset: "
                "set data.hf_path to a hub id, or data.data_dir to a folder with data/<split>-*.parquet"
            )
        self.source = HFSource(
            hf_path or data_dir,
            hf_name,
            image_column,
            label_column,
            Path(data_dir) / "cache" / "hf",
            revision,
        )
        self.default_in_chans = in_chans
        names = self.source.class_names()
        if names is None and num_classes is None:
            raise ConfigError(
                f"the label column {label_column!r} of {self.source.hf_path!r} is not a ClassLabel: "
                "set data.num_classes"
            )
        self.names = names or [str(i) for i in range(num_classes)]
        self.default_num_classes = len(self.names)
        available = self.source.split_names()
        if train_split not in available:
            raise DataError(
                f"the HF dataset {self.source.hf_path!r} has no split {train_split!r} (it has {available})"
            )
        self.stored_splits = {"train": train_split}
        for role, split in (("val", val_split), ("test", test_split)):
            if split and split in available:
                self.stored_splits[role] = split
            elif split and role == "val":
                raise DataError(
                    f"the HF dataset {self.source.hf_path!r} has no split {split!r} (it has {available})"
                )
        super().__init__(
            data_dir, image_size=image_size, in_chans=in_chans, num_classes=num_classes, **kwargs
        )

    @property
    def class_names(self) -> list[str]:
        return list(self.names)

    def describe_source(self) -> dict:
        return {"splits": self.stored_splits, **self.source.describe(list(self.stored_splits.values()))}

    def read_sources(self) -> dict[str, Source]:
        sources = {role: self.source.read(split) for role, split in self.stored_splits.items()}
        for role, source in sources.items():
            if len(source) and (source.labels.min() < 0 or source.labels.max() >= self.num_classes):
                raise DataError(
                    f"split {self.stored_splits[role]!r} of {self.source.hf_path!r} has labels outside "
                    f"0..{self.num_classes - 1}: check data.label_column / data.num_classes"
                )
        return sources

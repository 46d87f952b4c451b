"""Datasets written in the real on-disk formats, for tests, the data benchmark and data subsets.

Each class has its own mean colour plus noise, so a model can learn them. The writers follow the
published layouts exactly (MNIST's IDX files, CIFAR pickles with bytes keys, the tiny-imagenet-200
tree, the hub's parquet layout with a ClassLabel), so the readers are exercised as they are on
real data.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    """uint8 [N, size, size, C]: a colour per class plus noise."""
    colours = np.random.default_rng(0).integers(30, 226, size=(int(labels.max()) + 1, channels))
    noise = rng.normal(0, 25, size=(len(labels), size, size, channels))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_idx(path: str | Path, array: np.ndarray, compress: bool = True) -> None:
    """Write uint8 values as an IDX file, gzipped like the published MNIST files when ``compress``
    (with no timestamp: the same array gives the same bytes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if compress else data)


def write_mnist(
    folder: str | Path, train_images, train_labels, test_images, test_labels, compress: bool = True
) -> Path:
    """The four MNIST files in ``folder``, as ``data=mnist data.data_dir=<folder>`` reads them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", train_images, compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", train_labels, compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", test_images, compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", test_labels, compress)
    return folder


def write_cifar10(root: Path, n_train: int = 100, n_test: int = 20, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with 5 training batches, test_batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_parts = np.array_split(np.arange(n_train), 5)
    batches = {f"data_batch_{i + 1}": len(part) for i, part in enumerate(train_parts)} | {
        "test_batch": n_test
    }
    for name, n in batches.items():
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = class_images(labels, 32, rng).transpose(0, 3, 1, 2).reshape(n, 3072)  # channel planes
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": images, b"filenames": []}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}, f)
    return folder


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-100-python`` with train, test and meta: fine labels 0..99, coarse label = fine // 5."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = np.arange(n) % 100
        rng.shuffle(fine)
        images = class_images(fine, 32, rng).transpose(0, 3, 1, 2).reshape(n, 3072)
        batch = {
            b"filenames": [],
            b"batch_label": name.encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": images,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    meta = {
        b"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f)
    return folder


def write_svhn(folder: Path, n_train: int = 100, n_test: int = 40, n_extra: int = 0, seed: int = 0) -> Path:
    """``folder`` with train_32x32.mat and test_32x32.mat (and extra_32x32.mat when ``n_extra``):
    MATLAB v5 files with X uint8 [32, 32, 3, N] and y [N, 1] in 1..10 (10 is the digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test), ("extra", n_extra)):
        if n == 0:
            continue
        digits = np.arange(n) % 10
        rng.shuffle(digits)
        images = class_images(digits, 32, rng).transpose(1, 2, 3, 0)  # [32, 32, 3, N]
        labels = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        savemat(folder / f"{name}_32x32.mat", {"X": images, "y": labels})
    return folder


def tiny_wnids(n: int = 200) -> list[str]:
    """Made-up wnids, written to wnids.txt in a shuffled order (as the real file is unsorted)."""
    return [f"n{1000000 + 7919 * i:08d}" for i in range(n)]


def write_tiny_imagenet(root: Path, per_class: int = 2, val_per_class: int = 1, seed: int = 0) -> Path:
    """``root/tiny-imagenet-200`` in the original layout, with real JPEGs."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = tiny_wnids()
    shuffled = list(rng.permutation(wnids))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in shuffled))
    (folder / "words.txt").write_text(
        "n00000001\tentity\n" + "".join(f"{w}\tthing {i}, object {i}\n" for i, w in enumerate(wnids))
    )
    labels = np.repeat(np.arange(200), per_class)
    for label, image in zip(labels, class_images(labels, 64, rng)):
        wnid = wnids[label]
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True, exist_ok=True)
        index = len(list(images.iterdir()))
        Image.fromarray(image).save(images / f"{wnid}_{index}.JPEG", quality=90)
        with open(folder / "train" / wnid / f"{wnid}_boxes.txt", "a") as f:
            f.write(f"{wnid}_{index}.JPEG\t0\t0\t63\t63\n")
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    val_labels = rng.permutation(np.repeat(np.arange(200), val_per_class))
    rows = []
    for i, (label, image) in enumerate(zip(val_labels, class_images(val_labels, 64, rng))):
        Image.fromarray(image).save(folder / "val" / "images" / f"val_{i}.JPEG", quality=90)
        rows.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(rows))
    (folder / "test" / "images").mkdir(parents=True, exist_ok=True)
    return folder


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 10, seed: int = 0) -> Path:
    """``root/<class>/*.{jpg,png}`` with images of varying sizes and modes."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = int(rng.integers(40, 90))
            image = Image.fromarray(class_images(np.array([label]), size, rng)[0])
            if i % 2:
                image.save(root / name / f"{i:04d}.png")
            else:
                image.save(root / name / f"{i:04d}.jpg", quality=90)
    return root


def write_hf_parquet(
    root: Path,
    names: list[str],
    splits: dict[str, int],
    size: int = 64,
    seed: int = 0,
    shard_suffix: str = "",
) -> Path:
    """A local copy of a hub image dataset: ``root/data/<split>-00000-of-00001<suffix>.parquet``
    with columns image (Image feature: PNG bytes) and label (ClassLabel with ``names``)."""
    import datasets

    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    (Path(root) / "data").mkdir(parents=True, exist_ok=True)
    for split, n in splits.items():
        labels = np.arange(n) % len(names)
        encoded = []
        for image in class_images(labels, size, rng):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=90)
            encoded.append({"bytes": buffer.getvalue(), "path": None})
        ds = datasets.Dataset.from_dict({"image": encoded, "label": labels.tolist()}, features=features)
        ds.to_parquet(str(Path(root) / "data" / f"{split}-00000-of-00001{shard_suffix}.parquet"))
    return Path(root)


def write_split_images(datamodule, split: str, folder: str | Path, count: int | None = None) -> list[int]:
    """The first ``count`` images of a datamodule's split (as its loader orders them) as lossless
    PNG files ``folder/<index>_<class name>.png``; returns their labels. Real test images on disk,
    for ``python -m vit_rpe.predict`` (its tests, and timing it on a dataset's own images)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = datamodule.split(split)  # a TensorImageDataset: slicing gives (images, labels)
    images, labels = dataset[: count or len(dataset)]
    names = datamodule.class_names
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        pixels = image.cpu().numpy()
        array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
        Image.fromarray(array).save(folder / f"{i:06d}_{names[label]}.png")
    return labels.tolist()

"""The decoded-image cache: uint8 ``.npy`` arrays under ``data_dir/cache``, keyed by the source.

A cache entry is a folder ``<name>-<key>/`` holding ``<split>_images.npy`` [N, C, H, W] and
``<split>_labels.npy`` [N] for each split the format stores, and ``meta.json``. The key hashes
what the arrays were decoded from (file names, sizes, mtimes, or a dataset fingerprint) and how
(size, channels): touching a source file gives a new key, so a stale cache is never read. An entry
is written into a temporary folder and renamed into place whole, so a crash leaves no half cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images [N, C, H, W], int64 labels)


def file_fingerprint(files: Iterable[Path], root: Path | None = None) -> list[tuple[str, int, int]]:
    """(name, size, mtime in ns) of every file: cheap to compute, changes when a file does."""
    prefix = len(str(root).rstrip(os.sep)) + 1 if root is not None else 0
    rows = []
    for path in map(str, files):
        stat = os.stat(path)
        rows.append((path[prefix:], stat.st_size, stat.st_mtime_ns))
    return rows


def cache_key(description: dict) -> str:
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def load_cache(folder: Path) -> Arrays | None:
    """The arrays of a complete cache entry, memory-mapped (copy-on-write); None if absent."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    arrays = {}
    for split in meta["splits"]:
        images = np.load(folder / f"{split}_images.npy", mmap_mode="c")
        labels = np.load(folder / f"{split}_labels.npy")
        arrays[split] = (images, labels)
    return arrays


def write_cache(
    folder: Path,
    shapes: dict[str, tuple[int, ...]],
    fill: Callable[[str, np.ndarray, np.ndarray], None],
    meta: dict,
) -> Arrays:
    """Allocate one memory-mapped array per split, let ``fill(split, images, labels)`` decode
    into it, then publish the folder atomically. Another process that published first wins."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        for split, shape in shapes.items():
            images = np.lib.format.open_memmap(tmp / f"{split}_images.npy", "w+", np.uint8, shape)
            labels = np.zeros(shape[0], dtype=np.int64)
            fill(split, images, labels)
            images.flush()
            del images
            np.save(tmp / f"{split}_labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps({**meta, "splits": list(shapes)}, indent=1, default=str))
        try:
            os.rename(tmp, folder)
            log.info("wrote the decoded cache %s", folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_cache(folder)

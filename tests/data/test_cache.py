"""The decoded cache: reused while the files stay, rebuilt when one changes, never left half written;
the streaming fallback for data over ``max_cache_gb`` yields the same uint8 batches."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from vit_rpe.data import ImageFolderDataModule, decoded
from vit_rpe.data.cache import load_cache, write_cache
from vit_rpe.data.synthetic import write_image_folder
from vit_rpe.utils.errors import DataError


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6)


def cache_entries(folder):
    return sorted(p.name for p in (folder / ".cache").iterdir())


def test_cache_is_reused_without_decoding(folder, monkeypatch):
    first = ImageFolderDataModule(folder, image_size=16, val_size=0.25, test_size=0.25)
    first.setup()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(decoded, "decode_image", no_decoding)
    again = ImageFolderDataModule(folder, image_size=16, val_size=0.25, test_size=0.25)
    again.setup()
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split][0], again.splits[split][0])
    assert len(cache_entries(folder)) == 1


def test_changed_file_or_size_gives_a_new_cache(folder):
    dm = ImageFolderDataModule(folder, image_size=16, val_size=0.25, test_size=0.25)
    before = dm.decoded()["train"][0].clone()
    victim = sorted((folder / "a").iterdir())[0]
    Image.fromarray(np.full((30, 30, 3), 255, np.uint8)).save(
        victim, format="PNG" if victim.suffix == ".png" else "JPEG"
    )
    os.utime(victim, ns=(1, 1))  # a different mtime, whatever the clock says
    after = ImageFolderDataModule(folder, image_size=16, val_size=0.25, test_size=0.25).decoded()["train"][0]
    assert len(cache_entries(folder)) == 2
    assert torch.all(after[0] >= 250) and not torch.equal(before[0], after[0])
    ImageFolderDataModule(folder, image_size=8).decoded()
    assert len(cache_entries(folder)) == 3


def test_a_failed_build_leaves_nothing(tmp_path):
    def fill(split, images, labels):
        images[:2] = 7
        raise KeyboardInterrupt  # a crash halfway through decoding

    with pytest.raises(KeyboardInterrupt):
        write_cache(tmp_path / "cache" / "x-123", {"train": (4, 1, 2, 2)}, fill, meta={})
    assert list((tmp_path / "cache").iterdir()) == []
    assert load_cache(tmp_path / "cache" / "x-123") is None

    def good(split, images, labels):
        images[:] = 3
        labels[:] = [0, 1, 0, 1]

    arrays = write_cache(tmp_path / "cache" / "x-123", {"train": (4, 1, 2, 2)}, good, meta={})
    assert arrays["train"][0].dtype == np.uint8 and int(arrays["train"][0].sum()) == 3 * 16
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["x-123"]


def test_too_big_for_memory_streams_the_same_uint8_batches(folder):
    cached = ImageFolderDataModule(folder, image_size=16, val_size=0.25, test_size=0.25, batch_size=4)
    streamed = ImageFolderDataModule(
        folder,
        image_size=16,
        val_size=0.25,
        test_size=0.25,
        batch_size=4,
        max_cache_gb=0,
        cache=True,
        cache_dir=folder.parent / "unused",
    )
    streamed.setup()
    assert not isinstance(streamed.splits["train"][0], torch.Tensor)
    assert not (folder.parent / "unused").exists()
    for a, b in zip(cached.test_dataloader(), streamed.test_dataloader()):
        assert b[0].dtype == torch.uint8
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_cache_off_decodes_into_memory(folder):
    dm = ImageFolderDataModule(folder, image_size=16, cache=False, val_size=0.25, test_size=0.25)
    dm.setup()
    assert not (folder / ".cache").exists()
    assert dm.splits["train"][0].dtype == torch.uint8


def test_a_corrupt_file_seen_by_a_worker_gives_the_plain_message(folder):
    (folder / "a" / "zz_bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        ImageFolderDataModule(folder, image_size=16, num_workers=2).setup()
    assert str(info.value).startswith(f"the image file {folder / 'a' / 'zz_bad.jpg'} cannot be decoded")
    assert "Traceback" not in str(info.value)
    assert list((folder / ".cache").iterdir()) == []

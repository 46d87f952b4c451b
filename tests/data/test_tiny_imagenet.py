"""Tiny ImageNet from the original folder layout and from a local copy of the hub's parquet repo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vit_rpe.data import TinyImageNetDataModule
from vit_rpe.data.synthetic import tiny_wnids, write_hf_parquet, write_tiny_imagenet
from vit_rpe.utils.errors import DataError


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_imagenet(root, per_class=2, val_per_class=1)
    return root


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_hub")
    # the hub repo: data/train-00000-of-00001-<hash>.parquet, data/valid-00000-of-00001-<hash>.parquet
    return write_hf_parquet(
        root, tiny_wnids(), {"train": 400, "valid": 200}, shard_suffix="-1359597a978bc4fa"
    )


def test_folder_labels_follow_sorted_wnids_and_words(tiny_root):
    dm = TinyImageNetDataModule(tiny_root, val_size=0.5)
    assert dm.source == "folder" and dm.num_classes == 200 and dm.image_size == 64
    assert dm.wnids == sorted(tiny_wnids())  # wnids.txt is shuffled on disk
    assert dm.class_names[:2] == ["thing 0", "thing 1"]  # first synonym of words.txt
    dm.setup()
    train_x, train_y = dm.splits["train"]
    test_x, test_y = dm.splits["test"]
    assert (len(train_y), len(dm.splits["val"][1]), len(test_y)) == (200, 200, 200)
    assert train_x.dtype == torch.uint8 and tuple(train_x.shape[1:]) == (3, 64, 64)
    # the official val set is our test set, labelled by val_annotations.txt, in its order
    rows = [
        line.split("\t")
        for line in (tiny_root / "tiny-imagenet-200/val/val_annotations.txt").read_text().splitlines()
    ]
    assert test_y.tolist() == [dm.wnids.index(row[1]) for row in rows]
    first = np.asarray(Image.open(tiny_root / "tiny-imagenet-200/val/images" / rows[0][0]).convert("RGB"))
    assert torch.equal(test_x[0], torch.from_numpy(first.transpose(2, 0, 1).copy()))


def test_validation_follows_the_seed_and_the_test_set_does_not(tiny_root):
    first, second = (TinyImageNetDataModule(tiny_root, val_size=0.5, seed=seed) for seed in (0, 1))
    first.setup()
    second.setup()
    assert torch.equal(first.splits["test"][0], second.splits["test"][0])
    assert not torch.equal(first.splits["val"][0], second.splits["val"][0])


def test_hub_layout_through_datasets(tiny_hub, tmp_path):
    dm = TinyImageNetDataModule(tmp_path, source="hf", hf_path=str(tiny_hub), val_size=0.5)
    assert dm.num_classes == 200 and dm.class_names == tiny_wnids()
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [200, 200, 200]
    assert dm.splits["test"][1].tolist() == (np.arange(200) % 200).tolist()  # the valid split, in order
    assert dm.splits["train"][0].dtype == torch.uint8


def test_auto_source_prefers_the_folder(tiny_root, tmp_path):
    assert TinyImageNetDataModule(tiny_root).source == "folder"
    with pytest.raises(DataError, match="tiny-imagenet-200") as info:  # no folder, hub offline
        TinyImageNetDataModule(tmp_path)
    assert "data.source=hf" in str(info.value)


def test_broken_layouts(tiny_root, tmp_path):
    import shutil

    broken = tmp_path / "tiny-imagenet-200"
    shutil.copytree(tiny_root / "tiny-imagenet-200", broken)
    (broken / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match=r"val_annotations\.txt is missing"):
        TinyImageNetDataModule(tmp_path, source="folder", val_size=0.5).setup()

    (broken / "wnids.txt").write_text("n01\nn02\n")
    with pytest.raises(DataError, match="not 200"):
        TinyImageNetDataModule(tmp_path, source="folder")


def test_corrupt_jpeg_is_named(tiny_root, tmp_path):
    import shutil

    shutil.copytree(tiny_root / "tiny-imagenet-200", tmp_path / "tiny-imagenet-200")
    victim = sorted((tmp_path / "tiny-imagenet-200" / "train").rglob("*.JPEG"))[5]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError, match=victim.name):
        TinyImageNetDataModule(tmp_path, source="folder", val_size=0.5).setup()
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache").iterdir())  # no half cache
    assert not list((tmp_path / "cache").glob("tiny_imagenet-*"))

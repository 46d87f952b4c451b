"""Image folders and HF image datasets: class discovery, resizing, stratified splits, bad layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vit_rpe.data import HFImageDataModule, ImageFolderDataModule
from vit_rpe.data.synthetic import write_hf_parquet, write_image_folder
from vit_rpe.utils.errors import ConfigError, DataError


def test_image_folder_classes_sizes_and_stratified_splits(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("zebra", "ant", "moth"), per_class=10)
    dm = ImageFolderDataModule(tmp_path / "imgs", image_size=24, val_size=0.2, test_size=0.2)
    assert dm.class_names == ["ant", "moth", "zebra"] and dm.num_classes == 3 and dm.in_chans == 3
    dm.setup()
    for split, per_class in (("train", 6), ("val", 2), ("test", 2)):
        images, labels = dm.splits[split]
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, 24, 24)
        assert torch.bincount(labels, minlength=3).tolist() == [per_class] * 3
    assert not (tmp_path / "imgs" / "cache").exists() and (tmp_path / "imgs" / ".cache").is_dir()
    # the cache is not mistaken for a class on the next run
    assert ImageFolderDataModule(tmp_path / "imgs").num_classes == 3


def test_image_folder_pixels_are_centre_crops(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 200  # the centre square is bright, the sides dark
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    Image.fromarray(np.full((20, 20), 50, np.uint8)).save(tmp_path / "b" / "grey.png")  # greyscale -> RGB
    dm = ImageFolderDataModule(tmp_path, image_size=20, val_size=0.5, test_size=0.25, seed=0)
    images, labels = dm.decoded()["train"]
    assert labels.tolist() == [0, 1]
    assert torch.all(images[0] == 200) and torch.all(images[1] == 50)


def test_image_folder_separate_test_tree_and_greyscale(tmp_path):
    write_image_folder(tmp_path / "train", classes=("a", "b"), per_class=6)
    write_image_folder(tmp_path / "test", classes=("a", "b"), per_class=3, seed=1)
    dm = ImageFolderDataModule(
        tmp_path / "train", test_dir=tmp_path / "test", image_size=16, in_chans=1, val_size=0.5
    )
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [6, 6, 6]
    assert dm.splits["test"][0].shape[1] == 1

    write_image_folder(tmp_path / "test", classes=("c",), per_class=1)
    with pytest.raises(DataError, match="classes missing"):
        ImageFolderDataModule(tmp_path / "train", test_dir=tmp_path / "test").setup()


def test_image_folder_bad_layouts(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*one folder per class"):
        ImageFolderDataModule(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class folders"):
        ImageFolderDataModule(tmp_path / "flat")
    (tmp_path / "flat" / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"one class folder \(empty_class\): a classifier needs at least two"):
        ImageFolderDataModule(tmp_path / "flat")
    (tmp_path / "flat" / "empty_too").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataModule(tmp_path / "flat").setup()
    write_image_folder(tmp_path / "bad", classes=("a", "b"), per_class=4)
    (tmp_path / "bad" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        ImageFolderDataModule(tmp_path / "bad").setup()


@pytest.fixture(scope="module")
def hub_copy(tmp_path_factory):
    return write_hf_parquet(
        tmp_path_factory.mktemp("hub"), ["cat", "dog", "eel"], {"train": 30, "test": 9}, size=40
    )


def test_hf_local_copy_classlabel_and_splits(hub_copy):
    dm = HFImageDataModule(hf_path=str(hub_copy), data_dir=hub_copy, image_size=32, val_size=0.2)
    assert dm.class_names == ["cat", "dog", "eel"] and dm.num_classes == 3
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [24, 6, 9]
    assert dm.splits["test"][1].tolist() == [0, 1, 2] * 3
    assert dm.splits["train"][0].dtype == torch.uint8 and tuple(dm.splits["train"][0].shape[1:]) == (
        3,
        32,
        32,
    )


def test_hf_missing_test_split_is_carved(hub_copy):
    dm = HFImageDataModule(
        data_dir=hub_copy, image_size=16, test_split="validation", val_size=0.2, test_size=0.2
    )
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [18, 6, 6]


def test_hf_bad_columns_and_offline_hub(hub_copy, tmp_path):
    with pytest.raises(ConfigError, match="no column 'img'"):
        HFImageDataModule(data_dir=hub_copy, image_column="img")
    with pytest.raises(DataError, match="no split 'training'"):
        HFImageDataModule(data_dir=hub_copy, train_split="training")
    with pytest.raises(DataError, match=r"data/train-\*.parquet"):  # HF_HUB_OFFLINE=1 in conftest
        HFImageDataModule(hf_path="someone/some-dataset", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"data\.hf_path is not set"):
        HFImageDataModule(data_dir=tmp_path / "nothing")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="not a readable parquet file"):
        HFImageDataModule(data_dir=tmp_path)


@pytest.mark.parametrize("source", ["image_folder", "hf"])
def test_a_carved_test_split_is_the_same_for_every_seed(source, tmp_path, hub_copy):
    """Runs of different seeds are scored on the same test images; only validation follows the seed."""
    if source == "image_folder":
        write_image_folder(tmp_path, classes=("a", "b", "c"), per_class=10)

    def splits(seed: int) -> dict:
        options = dict(image_size=8, val_size=0.2, test_size=0.2, seed=seed)
        if source == "image_folder":
            dm = ImageFolderDataModule(tmp_path, **options)
        else:  # the copy has train and test splits: ask for a missing one, so test is carved
            dm = HFImageDataModule(data_dir=hub_copy, test_split="validation", **options)
        dm.setup()
        return dm.splits

    first, second = splits(0), splits(1)
    assert torch.equal(first["test"][0], second["test"][0])
    assert not torch.equal(first["val"][0], second["val"][0])
    assert torch.bincount(first["test"][1]).tolist() == [2, 2, 2]


def test_hf_on_folders_of_other_formats_says_which(tmp_path):
    """A save_to_disk folder is named as such (not read); an image tree points at data=image_folder."""
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"label": [0, 1]})}).save_to_disk(saved)
    with pytest.raises(DataError, match="written by datasets' save_to_disk, a format data=hf does not read"):
        HFImageDataModule(data_dir=saved)
    write_image_folder(tmp_path / "tree", classes=("a", "b"), per_class=2)
    with pytest.raises(DataError, match=r"a tree of images: use data=image_folder data\.data_dir="):
        HFImageDataModule(data_dir=tmp_path / "tree")

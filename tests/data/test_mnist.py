"""MNIST from the real IDX files, the torchvision layout, clear errors, and the bundled digits."""

import gzip
import urllib.request

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_MNIST, needs_real_mnist
from vit_rpe.data import DigitsDataModule, MNISTDataModule
from vit_rpe.data.mnist import read_idx
from vit_rpe.data.synthetic import write_idx, write_mnist
from vit_rpe.utils.errors import DataError

# Published class counts of the MNIST test and training labels.
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

needs_shared = needs_real_mnist


@needs_shared
def test_real_idx_files_read_exactly():
    images = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    train_labels = read_idx(SHARED_MNIST / "train-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == TEST_COUNTS
    assert np.bincount(train_labels).tolist() == TRAIN_COUNTS
    assert images.min() == 0 and images.max() == 255
    # digits are drawn in the centre: the border rows are empty, the middle is not
    assert images[:, 0, :].max() == 0 and images[:, 14, :].mean() > 40
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_validation_is_a_seeded_stratified_share_of_train(real_mnist_folder):
    dm = MNISTDataModule(data_dir=real_mnist_folder, val_size=1000, seed=3, download=False)
    dm.setup()
    (tx, ty), (vx, vy), (sx, sy) = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    # every class gives validation its rounded share (1000 of 8000: an eighth): 998 images
    file_counts = torch.from_numpy(np.bincount(read_idx(real_mnist_folder / "train-labels-idx1-ubyte.gz")))
    assert torch.bincount(vy).tolist() == (file_counts / 8).round().long().tolist()
    assert (len(ty), len(vy), len(sy)) == (7002, 998, 2000)
    assert tx.shape == (7002, 1, 28, 28) and tx.dtype == torch.uint8 and ty.dtype == torch.int64
    # train and validation are a partition of the training file; the test file is untouched
    train_file = torch.from_numpy(read_idx(real_mnist_folder / "train-images-idx3-ubyte.gz").copy())
    assert torch.equal(
        torch.cat([tx, vx]).flatten(1).sum(1).sort().values, train_file.flatten(1).sum(1).sort().values
    )
    assert torch.equal(
        sx[:, 0], torch.from_numpy(read_idx(real_mnist_folder / "t10k-images-idx3-ubyte.gz").copy())
    )
    again = MNISTDataModule(data_dir=real_mnist_folder, val_size=1000, seed=3, download=False)
    again.setup()
    assert torch.equal(again.splits["val"][1], vy)
    other = MNISTDataModule(data_dir=real_mnist_folder, val_size=1000, seed=4, download=False)
    other.setup()
    assert not torch.equal(other.splits["val"][0], vx)


def test_torchvision_raw_layout_uncompressed(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)
    write_mnist(tmp_path / "MNIST" / "raw", images, labels, images[:10], labels[:10], compress=False)
    dm = MNISTDataModule(data_dir=tmp_path, val_size=15, download=False)
    dm.setup()
    assert len(dm.splits["train"][1]) + len(dm.splits["val"][1]) == 30 and len(dm.splits["test"][1]) == 10
    assert torch.equal(dm.splits["test"][0][:, 0], torch.from_numpy(images[:10].astype(np.uint8)))


def test_missing_files_offline_say_where_to_put_them(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    dm = MNISTDataModule(data_dir=tmp_path / "nothing-here")
    with pytest.raises(DataError, match="download failed") as err:
        dm.setup()
    assert "train-images-idx3-ubyte.gz" in str(err.value) and "data.data_dir" in str(err.value)
    assert not any((tmp_path / "nothing-here").glob("*")), "no partial file may be left behind"


def test_only_the_test_files_point_at_mnist_subset(tmp_path):
    """The shared MNIST folder holds the t10k files alone: the message says how to train on them."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (10, 28, 28)), rng.integers(0, 10, 10)
    write_mnist(tmp_path, images, labels, images, labels)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / f"{name}.gz").unlink()
    with pytest.raises(DataError, match="Only the test files are in") as err:
        MNISTDataModule(data_dir=tmp_path, download=False).setup()
    assert f"python -m vit_rpe.data.mnist_subset {tmp_path} data/mnist_8k" in str(err.value)


def test_truncated_and_foreign_files_are_named(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "x.idx", rng.integers(0, 256, (4, 28, 28)), compress=False)
    raw = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "x.idx").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "x.idx")
    (tmp_path / "y.idx").write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "y.idx")
    (tmp_path / "z.idx.gz").write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DataError, match="corrupt"):
        read_idx(tmp_path / "z.idx.gz")


def test_digits_split_is_fixed_stratified_and_in_range():
    dm = DigitsDataModule()
    dm.setup()
    sizes = {name: len(labels) for name, (images, labels) in dm.splits.items()}
    assert sizes == {"train": 1258, "val": 270, "test": 269}
    images, labels = dm.splits["train"]
    assert images.shape[1:] == (1, 8, 8) and images.dtype == torch.uint8 and images.max() == 255
    assert labels.bincount().min() >= 120
    all_images = torch.cat([dm.splits[s][0] for s in ("train", "val", "test")]).flatten(1)
    assert len(torch.unique(all_images, dim=0)) > 1700  # no image in two splits (up to duplicates)
    again = DigitsDataModule(seed=123)
    again.setup()
    assert torch.equal(again.splits["test"][1], dm.splits["test"][1])


def test_batches_are_gathered_and_normalised_on_device():
    dm = DigitsDataModule(batch_size=32)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and images.dtype == torch.uint8
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    expected = (images.float() / 255 - dm.transform.mean) / dm.transform.std
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, labels)

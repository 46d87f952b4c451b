"""The CPU study's MNIST folder, built from the official test files alone."""

import time

import numpy as np
import pytest

from tests.conftest import needs_real_mnist
from vit_rpe.data import MNISTDataModule
from vit_rpe.data.mnist import read_idx
from vit_rpe.data.synthetic import write_idx
from vit_rpe.utils.errors import DataError


def fake_test_files(folder, count=30):
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels, compress=False)  # either form is read
    return images, labels


def test_train_is_the_first_test_images_and_test_the_rest(tmp_path):
    from vit_rpe.data.mnist_subset import main

    images, labels = fake_test_files(tmp_path / "official")
    main([str(tmp_path / "official"), str(tmp_path / "subset"), "--train", "20"])
    subset = tmp_path / "subset"
    np.testing.assert_array_equal(read_idx(subset / "train-images-idx3-ubyte.gz"), images[:20])
    np.testing.assert_array_equal(read_idx(subset / "train-labels-idx1-ubyte.gz"), labels[:20])
    np.testing.assert_array_equal(read_idx(subset / "t10k-images-idx3-ubyte.gz"), images[20:])
    np.testing.assert_array_equal(read_idx(subset / "t10k-labels-idx1-ubyte.gz"), labels[20:])
    dm = MNISTDataModule(data_dir=subset, val_size=10, seed=0, download=False)
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [10, 10, 10]


def test_the_same_source_writes_the_same_bytes(tmp_path, monkeypatch):
    """No timestamp in the gzip headers: a folder rebuilt later is byte-identical (checksums hold)."""
    from vit_rpe.data.mnist_subset import main

    fake_test_files(tmp_path / "official")
    now = time.time()
    for dest, clock in (("a", now), ("b", now + 3600)):
        monkeypatch.setattr(time, "time", lambda clock=clock: clock)
        main([str(tmp_path / "official"), str(tmp_path / dest), "--train", "20", "--shifted", "40"])
    for file in (tmp_path / "a").iterdir():
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes(), file.name


def test_shifted_training_images_are_moved_copies_of_the_first_and_test_the_rest(tmp_path):
    from vit_rpe.data.mnist_subset import main

    images, labels = fake_test_files(tmp_path / "official")
    main([str(tmp_path / "official"), str(tmp_path / "shifted"), "--train", "10", "--shifted", "40"])
    train = read_idx(tmp_path / "shifted" / "train-images-idx3-ubyte.gz")
    train_labels = read_idx(tmp_path / "shifted" / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(read_idx(tmp_path / "shifted" / "t10k-images-idx3-ubyte.gz"), images[10:])
    # every training image is one of the 10 sources moved by (dy, dx) in [-2, 2]^2 with zero fill
    padded = np.pad(images[:10], ((0, 0), (2, 2), (2, 2)))
    moves = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    moved = np.stack([padded[:, 2 - dy : 30 - dy, 2 - dx : 30 - dx] for dy, dx in moves])
    sources, used_moves = [], set()
    for image, label in zip(train, train_labels):
        move, source = np.argwhere((moved == image).all(axis=(2, 3)))[0]
        assert labels[source] == label
        sources.append(source)
        used_moves.add(move)
    assert np.bincount(sources, minlength=10).tolist() == [4] * 10  # each source equally often
    assert len(used_moves) > 10  # shifted, not copied


def test_bad_source_or_size_is_a_clear_error(tmp_path, capsys):
    from vit_rpe.data.mnist_subset import main, write_test_split

    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        write_test_split(tmp_path / "nothing", tmp_path / "out")
    fake_test_files(tmp_path / "official")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "official"), str(tmp_path / "out"), "--train", "30"])
    assert exit_info.value.code == 1 and "--train 30" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "official"), str(tmp_path / "out"), "--train", "10", "--shifted", "0"])
    assert exit_info.value.code == 1 and "--shifted 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written


@needs_real_mnist
def test_the_shared_files_give_8000_and_2000(real_mnist_folder):
    """The tests' real_mnist_folder is this folder."""
    assert len(read_idx(real_mnist_folder / "train-labels-idx1-ubyte.gz")) == 8000
    assert len(read_idx(real_mnist_folder / "t10k-labels-idx1-ubyte.gz")) == 2000

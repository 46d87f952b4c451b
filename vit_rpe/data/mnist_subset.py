"""An MNIST folder made of the 10,000 official test images alone, split into train and test:

    python -m vit_rpe.data.mnist_subset ../shared/data/mnist data/mnist_8k [--train 8000]
    python -m vit_rpe.data.mnist_subset ../shared/data/mnist data/mnist60k --shifted 60000

The first ``--train`` test images become the training set, the rest the test set, written as the
four IDX files ``data=mnist`` reads. With 8,000 / 2,000 it is the data of the CPU study
(``experiment=mnist_rpe_cpu_study``) and of the tests' ``real_mnist_folder``: real digits for a
machine without the 60,000 training images, small enough to train on a CPU in minutes.
``--shifted 60000`` makes a training set of MNIST's full size from those digits (random shifts),
for measuring what full-size training costs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vit_rpe.data.mnist import find_mnist_file, read_idx
from vit_rpe.data.synthetic import write_mnist
from vit_rpe.utils.errors import DataError, UserError
from vit_rpe.utils.run import exit_on_user_error


def read_test_files(source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of the t10k files in ``source``."""
    source = Path(source)
    arrays = []
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = find_mnist_file(source, name)
        if path is None:
            raise DataError(f"{name}(.gz) is not in {source}: give the folder with MNIST's test files")
        arrays.append(read_idx(path))
    return arrays[0], arrays[1]


def check_train_count(train: int, total: int) -> None:
    if not 0 < train < total:
        raise UserError(f"--train {train} leaves no test images: give a number from 1 to {total - 1}")


def write_test_split(source: str | Path, dest: str | Path, train: int = 8000) -> Path:
    """Write ``dest`` from ``source``'s t10k files: their first ``train`` images train, the rest test."""
    images, labels = read_test_files(source)
    check_train_count(train, len(labels))
    return write_mnist(dest, images[:train], labels[:train], images[train:], labels[train:])


def write_shifted_mnist(
    source: str | Path,
    dest: str | Path,
    n_train: int = 60000,
    train: int = 8000,
    max_shift: int = 2,
    seed: int = 0,
) -> Path:
    """Like ``write_test_split``, with ``n_train`` training images made from the first ``train``.

    Each training image is one of those digits moved by up to ``max_shift`` pixels each way (zero
    fill, seeded), each digit used equally often; the test set is the other digits, untouched, so
    no test digit is the source of a training image.
    """
    images, labels = read_test_files(source)
    check_train_count(train, len(labels))
    if n_train < 1:
        raise UserError(f"--shifted {n_train} makes no training images: give a positive number, e.g. 60000")
    rng = np.random.default_rng(seed)
    sources = rng.permutation(np.arange(n_train) % train)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n_train, 2))
    m, size = max_shift, images.shape[1]
    padded = np.pad(images[:train], ((0, 0), (m, m), (m, m)))
    shifted = np.empty((n_train, size, size), np.uint8)
    for i, (j, (dy, dx)) in enumerate(zip(sources, shifts)):
        shifted[i] = padded[j, m - dy : m - dy + size, m - dx : m - dx + size]
    return write_mnist(dest, shifted, labels[sources], images[train:], labels[train:])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.data.mnist_subset", description=__doc__)
    parser.add_argument("source", type=Path, help="a folder with t10k-images-idx3-ubyte(.gz) and its labels")
    parser.add_argument("dest", type=Path, help="the folder to write (data.data_dir of the runs)")
    parser.add_argument("--train", type=int, default=8000, help="test images that become the training set")
    parser.add_argument(
        "--shifted", type=int, default=None, help="this many training images: shifts of those"
    )
    args = parser.parse_args(argv)
    if args.shifted is None:
        dest = exit_on_user_error(lambda _: write_test_split(args.source, args.dest, args.train), None)
        print(f"{dest}: {args.train} training images, the rest of the test set for testing")
    else:
        dest = exit_on_user_error(
            lambda _: write_shifted_mnist(args.source, args.dest, args.shifted, args.train), None
        )
        print(
            f"{dest}: {args.shifted} training images shifted from {args.train} digits, the rest for testing"
        )


if __name__ == "__main__":
    main()

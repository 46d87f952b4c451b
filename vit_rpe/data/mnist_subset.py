"""An MNIST folder made of the 10,000 official test images alone, split into train and test:

    python -m vit_rpe.data.mnist_subset ../shared/data/mnist data/mnist_8k [--train 8000]

The first ``--train`` test images become the training set, the rest the test set, written as the
four IDX files ``data=mnist`` reads. With 8,000 / 2,000 it is the data of the CPU study
(``experiment=mnist_rpe_cpu_study``) and of the tests' ``real_mnist_folder``: real digits for a
machine without the 60,000 training images, small enough to train on a CPU in minutes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vit_rpe.data.mnist import find_mnist_file, read_idx
from vit_rpe.data.synthetic import write_mnist
from vit_rpe.utils.errors import DataError, UserError
from vit_rpe.utils.run import exit_on_user_error


def write_test_split(source: str | Path, dest: str | Path, train: int = 8000) -> Path:
    """Write ``dest`` from ``source``'s t10k files: their first ``train`` images train, the rest test."""
    source = Path(source)
    arrays = []
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = find_mnist_file(source, name)
        if path is None:
            raise DataError(f"{name}(.gz) is not in {source}: give the folder with MNIST's test files")
        arrays.append(read_idx(path))
    images, labels = arrays
    if not 0 < train < len(labels):
        raise UserError(f"--train {train} leaves no test images: give a number from 1 to {len(labels) - 1}")
    return write_mnist(dest, images[:train], labels[:train], images[train:], labels[train:])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.data.mnist_subset", description=__doc__)
    parser.add_argument("source", type=Path, help="a folder with t10k-images-idx3-ubyte(.gz) and its labels")
    parser.add_argument("dest", type=Path, help="the folder to write (data.data_dir of the runs)")
    parser.add_argument("--train", type=int, default=8000, help="test images that become the training set")
    args = parser.parse_args(argv)
    dest = exit_on_user_error(lambda _: write_test_split(args.source, args.dest, args.train), None)
    print(f"{dest}: {args.train} training images, the rest of the test set for testing")


if __name__ == "__main__":
    main()

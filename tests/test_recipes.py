"""Each dataset's default recipe learns: tiny runs on data written in the real on-disk formats.

Only the size shrinks (a narrow, shallow network; a few hundred images; a few epochs, with the
warmup shortened in step); the patch size, optimiser, schedule shape and augmentation (RandAugment
in loader workers, mixup / cutmix) are the recipe's, as `data=<name>` composes them. The slow test
runs the MNIST recipe at full size on real digits.
"""

from __future__ import annotations

import pytest

from vit_rpe.data.synthetic import write_cifar10, write_cifar100, write_svhn, write_tiny_imagenet
from vit_rpe.train import train

TINY = ("model.net.embed_dim=32", "model.net.depth=2", "model.net.num_heads=2")
QUIET = (
    "trainer=cpu",
    "trainer.num_sanity_val_steps=0",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "logger=none",
)


def tiny_run(train_config, *overrides: str) -> dict:
    cfg = train_config(*TINY, *QUIET, *overrides, fast=False)
    return train(cfg)


# data option -> (writes its fixtures in the real format, the metric that shows it learned, and
# the bar: 10 classes have chance 0.1 at top-1; 100 classes 0.05 and 200 classes 0.025 at top-5)
RECIPE_RUNS = {
    "cifar10": (
        lambda root: write_cifar10(root, n_train=500, n_test=100),
        "test/acc",
        0.5,
        "data.val_size=0.2",
    ),
    "cifar100": (
        lambda root: write_cifar100(root, n_train=1000, n_test=200),
        "test/acc_top5",
        0.2,
        "data.val_size=0.2",
    ),
    "svhn": (
        lambda root: write_svhn(root, n_train=500, n_test=100),
        "test/acc",
        0.5,
        "data.val_size=0.2",
    ),
    "tiny_imagenet": (
        lambda root: write_tiny_imagenet(root, per_class=3, val_per_class=1),
        "test/acc_top5",
        0.1,
        # 3 images a class: dealt 3 times each, an epoch would see one per class (the sampler has
        # its own tests in tests/data/test_augment.py)
        "data.val_size=0.25 data.repeated_augmentation=1",
    ),
}


@pytest.mark.parametrize("data", sorted(RECIPE_RUNS))
def test_the_recipe_learns_on_real_format_data(data, train_config, tmp_path):
    write, metric, bar, val_size = RECIPE_RUNS[data]
    write(tmp_path)
    metrics = tiny_run(
        train_config,
        f"data={data}",
        f"data.data_dir={tmp_path}",
        *val_size.split(),
        "data.batch_size=32",
        "trainer.max_epochs=6",
        "model.scheduler.warmup_epochs=1",
    )
    assert metrics[metric] >= bar, metrics


@pytest.mark.slow
def test_mnist_recipe_reaches_96_percent_on_real_digits(train_config, real_mnist_folder):
    """The README's figure: the MNIST defaults, full size and full length, on 7,000 real digits."""
    metrics = train(
        train_config(
            "data=mnist", f"data.data_dir={real_mnist_folder}", "data.val_size=1000", *QUIET, fast=False
        )
    )
    assert metrics["epochs"] == 20 and metrics["test/acc"] >= 0.96, metrics


def test_the_small_dataset_vit_learns_cifar10_from_the_command_line_config(train_config, tmp_path):
    """variant=sl_vit data=cifar10: shifted patches and locality self-attention on the recipe."""
    write_cifar10(tmp_path, n_train=500, n_test=100)
    metrics = tiny_run(
        train_config,
        "variant=sl_vit",
        "data=cifar10",
        f"data.data_dir={tmp_path}",
        "data.val_size=0.2",
        "data.batch_size=32",
        "trainer.max_epochs=6",
        "model.scheduler.warmup_epochs=1",
    )
    assert metrics["test/acc"] >= 0.3, metrics  # chance is 0.1

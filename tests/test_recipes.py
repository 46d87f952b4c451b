"""Each dataset's default recipe learns: tiny runs on data written in the real on-disk formats.

Only the size shrinks (a narrow, shallow network; a few hundred images; a few epochs, with the
warmup shortened in step); the patch size, optimiser, schedule shape and augmentation (RandAugment
in loader workers, mixup / cutmix) are the recipe's, as `data=<name>` composes them. The slow test
runs the MNIST recipe at full size on real digits.
"""

from __future__ import annotations

import pytest

from vit_rpe.data.synthetic import write_cifar10, write_tiny_imagenet
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


def test_cifar10_recipe_learns(train_config, tmp_path):
    write_cifar10(tmp_path, n_train=500, n_test=100)
    metrics = tiny_run(
        train_config,
        "data=cifar10",
        f"data.data_dir={tmp_path}",
        "data.val_size=0.2",
        "data.batch_size=32",
        "trainer.max_epochs=6",
        "model.scheduler.warmup_epochs=1",
    )
    assert metrics["test/acc"] >= 0.5, metrics  # 10 classes: chance is 0.1


def test_tiny_imagenet_recipe_learns(train_config, tmp_path):
    write_tiny_imagenet(tmp_path, per_class=3, val_per_class=1)
    metrics = tiny_run(
        train_config,
        "data=tiny_imagenet",
        f"data.data_dir={tmp_path}",
        "data.val_size=0.25",
        "data.batch_size=32",
        "trainer.max_epochs=6",
        "model.scheduler.warmup_epochs=1",
    )
    assert metrics["test/acc_top5"] >= 0.1, metrics  # 200 classes: chance is 0.025 (top-5)


@pytest.mark.slow
def test_mnist_recipe_reaches_96_percent_on_real_digits(train_config, real_mnist_folder):
    """The README's figure: the MNIST defaults, full size and full length, on 7,000 real digits."""
    metrics = train(
        train_config(
            "data=mnist", f"data.data_dir={real_mnist_folder}", "data.val_size=1000", *QUIET, fast=False
        )
    )
    assert metrics["epochs"] == 20 and metrics["test/acc"] >= 0.96, metrics

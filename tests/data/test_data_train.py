"""One training run per datamodule through ``train(cfg)``, composed from the real data configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import LEARNS
from vit_rpe.data.synthetic import (
    tiny_wnids,
    write_cifar10,
    write_hf_parquet,
    write_image_folder,
    write_tiny_imagenet,
)
from vit_rpe.train import train


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    write_cifar10(root / "cifar", n_train=100, n_test=20)
    write_tiny_imagenet(root / "tiny", per_class=2, val_per_class=1)
    write_hf_parquet(root / "tiny_hub", tiny_wnids(), {"train": 400, "valid": 200})
    write_image_folder(root / "folder", classes=("ant", "bee", "cow"), per_class=10)
    write_hf_parquet(root / "hub", ["cat", "dog"], {"train": 20, "test": 6}, size=48)
    return root


# Tiny ImageNet (one training image per class here) learns in a full epoch of 16x16 patches,
# without the recipe's RandAugment and mixup / cutmix (test_recipes.py trains with them).
# The recipes' random erasing and repeated augmentation (a third of the images an epoch) are off
# too: these runs check the readers, in one or a few epochs.
PLAIN = ("data.random_erasing=0", "data.repeated_augmentation=1")
TINY_LEARNS = (
    *PLAIN,
    "model.net.patch_size=16",
    "trainer.limit_train_batches=null",
    "model.optimizer.lr=3e-2",
    "data.randaugment=null",
    "data.mixup=0",
    "data.cutmix=0",
)
CASES = {
    "cifar10": (
        "data=cifar10",
        "data.data_dir={root}/cifar",
        "data.val_size=0.2",
        "data.download=false",
        *PLAIN,
    ),
    "cifar10_mixup": (
        "data=cifar10",
        *PLAIN,
        "data.data_dir={root}/cifar",
        "data.val_size=0.2",
        "data.mixup=0.8",
        "data.cutmix=1.0",
        "data.batch_size=32",
    ),
    "tiny_imagenet_folder": (
        "data=tiny_imagenet",
        "data.data_dir={root}/tiny",
        "data.val_size=0.5",
        *TINY_LEARNS,
    ),
    "tiny_imagenet_hf": (
        "data=tiny_imagenet",
        "data.data_dir={root}/tiny_hub_cache",
        "data.source=hf",
        "data.hf_path={root}/tiny_hub",
        "data.val_size=0.5",
        *TINY_LEARNS,
    ),
    "image_folder": ("data=image_folder", "data.data_dir={root}/folder", "data.image_size=16"),
    "hf": ("data=hf", "data.data_dir={root}/hub", "data.image_size=16", "data.val_size=0.25"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_training_run_per_datamodule(case, fixtures, train_config):
    overrides = [o.format(root=fixtures) for o in CASES[case]]
    # the case's own overrides come last, and win
    cfg = train_config("data.batch_size=16", *LEARNS, "model.net.patch_size=4", *overrides)
    metrics = train(cfg)
    output_dir = Path(cfg.paths.output_dir)
    written = json.loads((output_dir / "metrics.json").read_text())
    assert written["test/acc"] == pytest.approx(metrics["test/acc"])
    expected_classes = {"image_folder": 3, "hf": 2}.get(case, 200 if "tiny" in case else 10)
    # learned: the test loss is below log(classes), a uniform guess's, by a margin that the untrained
    # model misses (measured: 0.02 above to 0.11 below it untrained, 0.36 to 0.49 below trained)
    assert written["test/loss"] < math.log(expected_classes) - 0.2, written
    saved = OmegaConf.load(output_dir / "config.yaml")
    assert saved.data.num_classes == expected_classes == saved.model.num_classes  # filled from disk
    if expected_classes > 10:
        assert "test/acc_top5" in written

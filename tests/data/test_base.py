"""ImageDataModule's hand-off with a backbone: it takes on the backbone's input size and
normalisation (``apply_data_config``) and says what its device transform produces (``data_config``)."""

from __future__ import annotations

import pytest
import torch

from vit_rpe.data import DigitsDataModule


def test_apply_data_config_resizes_and_normalises_as_the_backbone_expects():
    data = DigitsDataModule(batch_size=8)
    data.apply_data_config({"input_size": (1, 16, 16), "mean": (0.4,), "std": (0.25,)})
    assert data.transform.image_size == (16, 16) and data.image_size == 16
    images = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    torch.testing.assert_close(data.transform(images), torch.full((2, 1, 16, 16), (1 - 0.4) / 0.25))
    assert data.data_config == {"input_size": (1, 16, 16), "mean": (pytest.approx(0.4),), "std": (0.25,)}


def test_a_backbone_without_needs_keeps_the_datamodules_own():
    data = DigitsDataModule(batch_size=8)
    before = data.data_config
    data.apply_data_config(None)
    data.apply_data_config({"input_size": None, "mean": None})  # None keeps the datamodule's
    assert data.data_config == before and data.image_size == 8
    assert before["mean"] == (pytest.approx(DigitsDataModule.default_mean[0]),)


def test_num_workers_auto_uses_the_cpus_only_for_per_image_work(monkeypatch):
    """``auto``: no workers for batches gathered from memory; with RandAugment, the CPUs this
    process may use (its affinity), less one for the training process."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert DigitsDataModule(num_workers="auto").train_dataloader().num_workers == 0
    augmented = DigitsDataModule(num_workers="auto", randaugment="rand-m9-mstd0.5-inc1")
    assert augmented.train_dataloader().num_workers == 7
    assert augmented.val_dataloader().num_workers == 0
    assert DigitsDataModule(num_workers=2).train_dataloader().num_workers == 2

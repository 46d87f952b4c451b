"""Hardware: CUDA (bf16) and MPS runs where the hardware exists, torch.compile on CPU, and the
per-rank augmentation streams a data-parallel job relies on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import FAST
from vit_rpe.train import train

HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_run(train_config):
    metrics = train(train_config("trainer=gpu", fast=True))
    assert metrics["device"] == "cuda"
    assert metrics["val/loss"] == metrics["val/loss"]  # finite under bf16 autocast


@pytest.mark.mps
@pytest.mark.skipif(not HAS_MPS, reason="needs Apple MPS")
def test_mps_run(train_config):
    metrics = train(train_config("trainer=mps"))
    assert metrics["device"] == "mps"


def test_trainer_presets_compose(train_config):
    """Every trainer preset composes, and the distributed ones say per-device batches in their config."""
    for preset, accelerator in [
        ("cpu", "cpu"),
        ("gpu", "gpu"),
        ("mps", "mps"),
        ("auto", "auto"),
        ("ddp", "gpu"),
        ("ddp_sim", "cpu"),
    ]:
        overrides = [o for o in FAST if not o.startswith("trainer=")]
        cfg = train_config(f"trainer={preset}", *overrides, fast=False)
        assert cfg.trainer.accelerator == accelerator
    assert cfg.trainer.devices == 2 and cfg.trainer.strategy == "ddp_spawn"


@pytest.mark.slow
def test_compile_on_cpu_trains_and_checkpoints_load_uncompiled(train_config):
    """model.compile=true runs through torch.compile; its checkpoints use the plain names."""
    from hydra.utils import instantiate

    from vit_rpe.tasks import ImageClassifier
    from vit_rpe.utils.checkpoint import load_net_weights

    cfg = train_config("model.compile=true")
    metrics = train(cfg)
    saved = torch.load(metrics["best_ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in saved)
    ImageClassifier.load_from_checkpoint(metrics["best_ckpt"], map_location="cpu", weights_only=True)
    load_net_weights(instantiate(cfg.model.net), metrics["best_ckpt"])  # into a plain, uncompiled backbone


def test_each_rank_augments_differently(train_config):
    """DeviceTransform draws from a generator seeded with seed + global rank."""
    from hydra.utils import instantiate

    cfg = train_config("data.crop_padding=2", "data.hflip=0.5")
    crops = []
    for rank in (0, 1, 0):
        dm = instantiate(cfg.data)
        dm.trainer = SimpleNamespace(
            global_rank=rank, strategy=SimpleNamespace(root_device=torch.device("cpu"))
        )
        dm.setup("fit")
        images = dm.splits["train"][0][:16]
        crops.append(dm.transform(images, train=True))
    assert not torch.equal(crops[0], crops[1])  # ranks 0 and 1 differ
    torch.testing.assert_close(crops[0], crops[2])  # and each rank's stream is reproducible


def test_gpu_check_code_path_on_cpu(tmp_path):
    """``python -m vit_rpe.bench gpu --cpu``: every cell trains, and the table lands between markers."""
    from vit_rpe.bench.gpu import END, START, main

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nkept text\n")
    argv = ["--cpu", "--data", "digits", "--batches", "2", "--models", "vit", "linear"]
    argv += ["--rpes", "none", "exp"]
    assert main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    assert "kept text" in text and START in text and END in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| yes |" in line]
    assert len(rows) == 4  # 2 models x 2 RPEs, all finite
    assert main([*argv, "--out", str(out)]) == 0  # a second run replaces the section
    assert out.read_text().count(START) == 1

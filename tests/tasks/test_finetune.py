"""Fine-tuning: its options, frozen backbones, and whole runs through
``train(cfg)`` with pretrained backbones that export and reload to identical logits."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from transformers import AutoImageProcessor, ViTForImageClassification

from tests.conftest import FAST
from tests.helpers import TINY_TIMM, quiet_trainer, save_tiny_hf_vit
from vit_rpe.data import DigitsDataModule
from vit_rpe.models.pretrained import HFViT
from vit_rpe.tasks import ImageClassifier
from vit_rpe.tasks.finetune import FineTuning
from vit_rpe.train import train
from vit_rpe.utils.errors import ConfigError, UserError
from vit_rpe.utils.run import user_error_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The FAST trainer settings; the model.net sizes there belong to the from-scratch ViT.
TRAINER_FAST = tuple(o for o in FAST if not o.startswith("model."))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_tiny_hf_vit(tmp_path_factory.mktemp("hf_tiny"))


# --- options --------------------------------------------------------------------------------


def test_finetune_options_are_validated():
    with pytest.raises(ConfigError, match="linear_probe"):
        FineTuning.from_config({"mode": "probe"})
    with pytest.raises(ConfigError, match="layer_decay"):
        FineTuning.from_config({"layer_decay": 1.5})
    with pytest.raises(ConfigError, match="unknown keys"):
        FineTuning.from_config({"freeze_epochs": 1})


# --- frozen backbones -------------------------------------------------------------------------


class GradientProbe(L.Callback):
    """Per epoch: did any backbone / head parameter get a gradient, and did it change?"""

    def __init__(self):
        self.backbone_grad: dict[int, bool] = {}
        self.head_grad: dict[int, bool] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        head = {id(p) for p in pl_module.net.get_classifier().parameters()}
        params = list(pl_module.net.parameters())
        epoch = trainer.current_epoch
        self.backbone_grad[epoch] = self.backbone_grad.get(epoch, False) or any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in params if id(p) not in head
        )
        self.head_grad[epoch] = self.head_grad.get(epoch, False) or any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in params if id(p) in head
        )


def fit_tiny(hf_folder, tmp_path, finetune: dict, epochs: int = 2):
    torch.manual_seed(0)
    net = HFViT(str(hf_folder), num_classes=10, in_chans=1)
    task = ImageClassifier(
        net,
        num_classes=10,
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2},
        finetune=finetune,
    )
    data = DigitsDataModule(batch_size=32)
    data.apply_data_config(net.data_config())
    probe = GradientProbe()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[probe],
    )
    trainer.fit(task, datamodule=data)
    changed = {n for n, p in net.named_parameters() if not torch.equal(before[n], p)}
    return probe, changed, net


def test_backbone_frozen_for_the_first_epoch_then_trained(hf_folder, tmp_path):
    probe, changed, net = fit_tiny(hf_folder, tmp_path, {"freeze_backbone_epochs": 1})
    assert probe.backbone_grad == {0: False, 1: True}  # no gradient while frozen, then unfrozen
    assert probe.head_grad == {0: True, 1: True}
    assert "model.vit.embeddings.patch_embeddings.projection.weight" in changed
    assert all(p.requires_grad for p in net.parameters())


def test_linear_probe_trains_the_head_only(hf_folder, tmp_path):
    probe, changed, _ = fit_tiny(hf_folder, tmp_path, {"mode": "linear_probe", "layer_decay": 0.75})
    assert probe.backbone_grad == {0: False, 1: False} and probe.head_grad == {0: True, 1: True}
    assert changed == {"model.classifier.weight", "model.classifier.bias"}


# --- whole runs -------------------------------------------------------------------------------


def test_hf_vit_fine_tunes_on_digits_and_exports_a_reloadable_folder(train_config, hf_folder):
    cfg = train_config(
        *TRAINER_FAST,
        "model=hf_vit",
        f"model.net.name_or_path={hf_folder}",
        "data=digits",
        "data.batch_size=64",  # as measured below, not the from-scratch recipe's 32
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=null",
        "trainer.limit_test_batches=null",
        "model.optimizer.lr=1e-2",
        "model.scheduler.warmup_epochs=0",
        fast=False,
    )
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.25  # chance is 0.1: the tiny random ViT learns (0.36 measured)
    export = metrics["export_dir"]

    reloaded = ViTForImageClassification.from_pretrained(export).eval()
    processor = AutoImageProcessor.from_pretrained(export)
    assert reloaded.config.id2label == {i: str(i) for i in range(10)}
    assert processor.size["height"] == 16 and list(processor.image_mean) == pytest.approx([0.4] * 3)

    best = ImageClassifier.load_from_checkpoint(metrics["best_ckpt"], map_location="cpu").eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=images).logits, best(images), rtol=0, atol=0)


def test_timm_vit_trains_on_digits_and_exports_a_reloadable_folder(train_config):
    cfg = train_config(
        *TRAINER_FAST,
        "model=timm_vit",
        "model.net.name=vit_tiny_patch16_224",
        "model.net.pretrained=false",
        "model.net.img_size=8",
        "model.net.patch_size=2",
        *(f"+model.net.model_kwargs.{k}={v}" for k, v in TINY_TIMM.items()),
        "model.finetune.layer_decay=0.75",
        "data=digits",
        fast=False,
    )
    metrics = train(cfg)
    assert metrics["trainable_params"] == metrics["params"]
    plain = timm.create_model(f"local-dir:{metrics['export_dir']}", pretrained=True).eval()
    best = ImageClassifier.load_from_checkpoint(metrics["best_ckpt"], map_location="cpu").eval()
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(images), best(images), rtol=0, atol=0)
    assert plain.pretrained_cfg["mean"] == pytest.approx(DigitsDataModule.default_mean)  # what training used


@pytest.mark.parametrize("model", ["hf_vit", "timm_vit"])
def test_rpe_with_a_pretrained_model_is_a_config_error(train_config, hf_folder, model):
    cfg = train_config(
        *TRAINER_FAST,
        f"model={model}",
        f"model.net.name_or_path={hf_folder}" if model == "hf_vit" else "model.net.pretrained=false",
        "rpe=exp",
        fast=False,
    )
    with pytest.raises(Exception) as info:
        train(cfg)
    error = user_error_of(info.value)
    assert isinstance(error, ConfigError) and "rpe=exp works with the from-scratch ViT only" in str(error)


def test_an_unreachable_hub_model_is_one_clear_error(train_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    cfg = train_config(*TRAINER_FAST, "model=hf_vit", fast=False)
    with pytest.raises(Exception) as info:
        train(cfg)
    error = user_error_of(info.value)
    assert isinstance(error, UserError)
    assert "google/vit-base-patch16-224-in21k" in str(error) and "local folder" in str(error)


def test_experiments_compose(train_config):
    for name, target in [
        ("tinyimagenet_finetune", "HFViT"),
        ("cifar10_finetune", "HFViT"),
        ("mnist_vit_small_pretrained_vs_scratch", "TimmBackbone"),
        ("scene_folder_finetune", "TimmBackbone"),
    ]:
        cfg = train_config(f"experiment={name}", fast=False)
        assert cfg.model.net._target_.endswith(target), name
        assert "rpe" not in cfg.model.net


def test_a_compiled_pretrained_run_exports_and_writes_its_metrics(train_config, monkeypatch):
    """model.compile=true wraps the backbone (its names get torch.compile's ``_orig_mod.``); the
    export after fit and test still loads the best weights and metrics.json is written. The eager
    backend gives the same wrapper without inductor's minutes of compiling on the CPU."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = train_config(
        *TRAINER_FAST,
        "model=timm_vit",
        "model.net.name=vit_tiny_patch16_224",
        "model.net.pretrained=false",
        "model.net.img_size=8",
        "model.net.patch_size=4",
        *(f"+model.net.model_kwargs.{k}={v}" for k, v in TINY_TIMM.items()),
        "model.compile=true",
        fast=False,
    )
    metrics = train(cfg)
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["export_dir"] == metrics["export_dir"] and "test/acc" in written
    plain = timm.create_model(f"local-dir:{metrics['export_dir']}", pretrained=True).eval()
    best = ImageClassifier.load_from_checkpoint(metrics["best_ckpt"], map_location="cpu").eval()
    best.compile_net = False
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(images), best(images), rtol=0, atol=0)

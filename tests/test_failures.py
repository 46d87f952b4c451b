"""Failures that lose nothing: a diverging run stops with its step and keeps its last good
checkpoint; weights load safely (weights_only) from plain state dicts and safetensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from safetensors.torch import save_file

from vit_rpe.callbacks.nan_guard import NonFiniteLossError
from vit_rpe.train import train
from vit_rpe.utils.checkpoint import load_net_weights
from vit_rpe.utils.errors import CheckpointError


class Poison(L.Callback):
    """Puts a NaN into the first weight at one batch, as a diverging run would."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(train_config):
    cfg = train_config("trainer.max_epochs=3")
    with open_dict(cfg):
        cfg.callbacks["poison"] = {"_target_": f"{__name__}.Poison", "epoch": 1, "batch": 1}
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4 \(epoch 1, batch 1\)") as stopped:
        train(cfg)
    assert str(last) in str(stopped.value)  # the message says where the good weights are
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 3  # the end of the last good epoch
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if torch.is_tensor(v))
    assert not (last.parent / "last.ckpt.tmp").exists()


def test_nan_guard_checks_before_the_weights_change(train_config):
    """The guard runs before backward, so the optimizer never steps on NaN gradients."""
    cfg = train_config("trainer.max_epochs=1")
    model = instantiate(cfg.model)
    from vit_rpe.callbacks import NonFiniteLossGuard

    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False)
    with pytest.raises(NonFiniteLossError):
        NonFiniteLossGuard().on_before_backward(trainer, model, torch.tensor(float("inf")))
    NonFiniteLossGuard().on_before_backward(trainer, model, torch.tensor(1.0))  # finite: nothing happens


@pytest.fixture
def net_and_weights(train_config, tmp_path):
    cfg = train_config()
    net = instantiate(cfg.model.net)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return cfg, net, {k: v.clone().contiguous() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "task_prefix"])
def test_load_net_weights_from_plain_state_dicts(fmt, net_and_weights, tmp_path):
    cfg, net, state = net_and_weights
    path = tmp_path / f"net.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({f"net.{k}": v for k, v in state.items()} if fmt == "task_prefix" else state, path)
    fresh = load_net_weights(instantiate(cfg.model.net), path)
    images = torch.randn(2, 1, 8, 8)
    net.eval(), fresh.eval()
    torch.testing.assert_close(fresh(images), net(images))


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_load_performer_weights_with_or_without_its_extra_state(fmt, train_config, tmp_path):
    """A Performer's state dict holds its redraw schedule (a dict): torch.save keeps it,
    safetensors cannot; both files load, and the loaded net computes what the saved one did."""
    cfg = train_config("model=performer", "rpe=exp")
    net = instantiate(cfg.model.net).eval()
    state = net.state_dict()
    path = tmp_path / f"net.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}, str(path))
    else:
        torch.save(state, path)
    fresh = load_net_weights(instantiate(cfg.model.net), path).eval()
    images = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh(images), net(images))


def test_load_net_weights_rejects_other_shapes_and_code(net_and_weights, tmp_path):
    cfg, _net, state = net_and_weights
    path = tmp_path / "other.pt"
    torch.save({k: v[..., :1] if v.ndim else v for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        load_net_weights(instantiate(cfg.model.net), path)
    code = tmp_path / "code.pt"
    torch.save({"weights": state, "hook": Poison(0, 0)}, code)
    before = hashlib.sha256(code.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_net_weights(instantiate(cfg.model.net), code)
    assert hashlib.sha256(code.read_bytes()).hexdigest() == before

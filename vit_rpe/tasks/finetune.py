"""Fine-tuning: linear probing, a backbone frozen for the first epochs, layer-wise lr decay.

They work on any backbone that has a head (``get_classifier()`` or ``head``); the param groups
of layer-wise decay are built in tasks/optim.py, like those of every run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import lightning as L
from torch import nn

from vit_rpe.utils.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("full", "linear_probe")


@dataclass
class FineTuning:
    """What to train and at which rate: ``model.finetune`` in the config.

    ``mode``: ``full`` trains everything, ``linear_probe`` only the head.
    ``freeze_backbone_epochs``: train only the head for this many epochs, then everything.
    ``layer_decay``: the lr of each layer is ``lr * layer_decay ** (its distance from the head)``.
    """

    mode: str = "full"
    freeze_backbone_epochs: int = 0
    layer_decay: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"model.finetune.mode={self.mode!r}: choose one of {', '.join(MODES)}")
        if self.freeze_backbone_epochs < 0:
            raise ConfigError(f"model.finetune.freeze_backbone_epochs={self.freeze_backbone_epochs} < 0")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"model.finetune.layer_decay={self.layer_decay} must be in (0, 1], or null")

    @classmethod
    def from_config(cls, spec: Mapping | FineTuning | None) -> FineTuning:
        if isinstance(spec, FineTuning):
            return spec
        unknown = set(spec or {}) - {"mode", "freeze_backbone_epochs", "layer_decay"}
        if unknown:
            raise ConfigError(f"model.finetune has unknown keys {sorted(unknown)}")
        return cls(**(spec or {}))

    def callbacks(self) -> list[L.Callback]:
        if self.mode == "linear_probe":
            return [FreezeBackbone(epochs=None)]
        if self.freeze_backbone_epochs:
            return [FreezeBackbone(epochs=self.freeze_backbone_epochs)]
        return []


def head_of(net: nn.Module) -> nn.Module:
    head = net.get_classifier() if hasattr(net, "get_classifier") else getattr(net, "head", None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"{type(net).__name__} has no head (get_classifier() or .head) to train on its own")
    return head


def set_backbone_trainable(net: nn.Module, trainable: bool) -> None:
    """requires_grad on every parameter but the head's: a frozen backbone gets no gradient."""
    head = {id(p) for p in head_of(net).parameters()}
    for param in net.parameters():
        if id(param) not in head:
            param.requires_grad_(trainable)


class FreezeBackbone(L.Callback):
    """Train only the head for the first ``epochs`` epochs (None: for the whole run).

    The optimizer is built before, with every parameter in it: frozen ones get no gradient, so
    AdamW leaves them alone (no update, no weight decay), and unfreezing needs no new param
    group. Deciding at each epoch start also makes a resumed run freeze or not as it should.
    """

    def __init__(self, epochs: int | None = None):
        self.epochs = epochs

    def frozen_at(self, epoch: int) -> bool:
        return self.epochs is None or epoch < self.epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = self.frozen_at(trainer.current_epoch)
        set_backbone_trainable(pl_module.net, not frozen)
        if self.epochs is not None and trainer.current_epoch == self.epochs:
            log.info("epoch %d: backbone unfrozen, training every layer", trainer.current_epoch)

"""Fine-tuning: linear probing, a backbone frozen for the first epochs, layer-wise lr decay.

They work on any backbone that has a head (``get_classifier()`` or ``head``); layer-wise decay
asks the backbone for ``layer_id(name)`` and ``num_layers`` and otherwise numbers timm-style
names itself (embeddings 0, ``blocks.i`` i + 1, the final norm with the last block, head last).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
from torch import nn

from vit_rpe.tasks.optim import is_decayed, param_groups
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

    def param_groups(self, net: nn.Module, weight_decay: float, lr: float | None) -> list[dict]:
        if self.layer_decay is None:
            return param_groups(net, weight_decay)
        return layer_decay_groups(net, weight_decay, self.layer_decay, lr)

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


VIT_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_numbering(net: nn.Module) -> tuple[int, Any]:
    """(number of layers, name -> layer id): the backbone's own, else timm's ViT naming."""
    if hasattr(net, "layer_id"):
        return net.num_layers, net.layer_id
    blocks = getattr(net, "blocks", None)
    if blocks is None:
        raise ConfigError(f"{type(net).__name__} has no blocks to number: set finetune.layer_decay to null")
    depth = len(blocks)
    head = {name for name, _ in net.named_parameters() if name.startswith(("head.", "fc_norm."))}

    def layer_id(name: str) -> int:
        if match := VIT_BLOCK.search(name):
            return int(match.group(1)) + 1
        if name in head:
            return depth + 1
        return depth if name.startswith("norm.") else 0

    return depth + 2, layer_id


def layer_decay_groups(
    net: nn.Module, weight_decay: float, layer_decay: float, lr: float | None = None
) -> list[dict]:
    """One group per (layer, decayed or not); ``lr_scale`` = layer_decay ** (top layer - layer).

    The head gets the base lr, the last block ``lr * layer_decay``, and so on down to the
    embeddings. With ``lr`` given the groups carry their own ``lr`` (what torch optimizers read).
    """
    num_layers, layer_id = layer_numbering(net)
    skip = set(getattr(net, "no_weight_decay", lambda: set())())
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        layer, decayed = layer_id(name), is_decayed(name, param, skip)
        if (layer, decayed) not in groups:
            scale = layer_decay ** (num_layers - 1 - layer)
            group = {
                "params": [],
                "weight_decay": weight_decay if decayed else 0.0,
                "lr_scale": scale,
                "layer": layer,
            }
            if lr is not None:
                group["lr"] = lr * scale
            groups[layer, decayed] = group
        groups[layer, decayed]["params"].append(param)
    return [groups[key] for key in sorted(groups)]

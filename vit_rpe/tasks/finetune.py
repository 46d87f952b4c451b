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
from torch.nn.parallel import DistributedDataParallel

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

    def freeze(self, net: nn.Module) -> None:
        """A linear probe's backbone is frozen when the task is built, before a strategy wraps the
        model: DistributedDataParallel leaves its parameters out, and no gradient is computed."""
        if self.mode == "linear_probe":
            set_backbone_trainable(net, False)

    def callbacks(self) -> list[L.Callback]:
        if self.mode == "full" and self.freeze_backbone_epochs:
            return [FreezeBackbone(epochs=self.freeze_backbone_epochs)]
        return []


def head_of(net: nn.Module) -> nn.Module:
    head = net.get_classifier() if hasattr(net, "get_classifier") else getattr(net, "head", None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"{type(net).__name__} has no head (get_classifier() or .head) to train on its own")
    return head


def backbone_parameters(net: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in head_of(net).parameters()}
    return [param for param in net.parameters() if id(param) not in head]


def set_backbone_trainable(net: nn.Module, trainable: bool) -> None:
    """requires_grad on every parameter but the head's: a frozen backbone gets no gradient."""
    for param in backbone_parameters(net):
        param.requires_grad_(trainable)


class FreezeBackbone(L.Callback):
    """Train only the head for the first ``epochs`` epochs, then every layer.

    The optimizer holds every parameter from the start; a frozen one has no gradient at the
    optimizer step, so AdamW leaves it alone (no update, no weight decay), and unfreezing needs no
    new param group. Deciding at each epoch start also makes a resumed run freeze or not as it
    should.

    In one process a frozen backbone has ``requires_grad`` off: no gradient is computed for it.
    Under DistributedDataParallel that cannot be: its reducer, built when the model was wrapped,
    waits every step for a gradient of each parameter it holds, and a parameter it left out would
    never be averaged across ranks once unfrozen. So the backbone keeps ``requires_grad`` and its
    gradients, computed and all-reduced, are dropped before each optimizer step while it is frozen.
    """

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.drop_backbone_grads = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        under_ddp = isinstance(trainer.strategy.model, DistributedDataParallel)
        set_backbone_trainable(pl_module.net, not frozen or under_ddp)  # under DDP: see above
        self.drop_backbone_grads = frozen and under_ddp
        if trainer.current_epoch == self.epochs:
            log.info("epoch %d: backbone unfrozen, training every layer", trainer.current_epoch)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self.drop_backbone_grads:  # before gradient clipping, which then sees the head's only
            for param in backbone_parameters(pl_module.net):
                param.grad = None

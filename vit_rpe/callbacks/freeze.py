"""Freezing a backbone: every parameter but its head's, for a whole run or its first epochs.

A backbone's head is its ``get_classifier()`` (models/backbone.py). A linear probe freezes the
backbone when the task is built (``FineTuning.freeze``); ``FreezeBackbone`` freezes it for the
first epochs of a run.
"""

from __future__ import annotations

import logging

import lightning as L
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vit_rpe.models.backbone import Backbone

log = logging.getLogger(__name__)


def backbone_parameters(net: Backbone) -> list[nn.Parameter]:
    """Every parameter but the head's."""
    head = {id(p) for p in net.get_classifier().parameters()}
    return [param for param in net.parameters() if id(param) not in head]


def set_backbone_trainable(net: Backbone, trainable: bool) -> None:
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

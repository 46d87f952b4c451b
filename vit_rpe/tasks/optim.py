"""Parameter groups and the learning-rate schedule shared by every backbone.

One builder makes the param groups of every run: a plain run is layer-wise decay with a single
layer. Groups hold only the exceptions (no weight decay here, a smaller lr there); the lr and
the weight decay themselves are the optimizer's, as its factory was configured, whatever kind
of callable that factory is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from vit_rpe.models.backbone import layer_ids
from vit_rpe.utils.checkpoint import uncompiled

log = logging.getLogger(__name__)

NO_DECAY_NAME_PARTS = ("pos_embed", "cls_token", "dist_token", "reg_token", "position_embeddings")


def build_optimizer(
    make_optimizer: Callable[[list[dict]], Optimizer], net: nn.Module, layer_decay: float | None = None
) -> Optimizer:
    """``make_optimizer(param_groups(net, layer_decay))``, each group's lr times its ``lr_scale``.

    Scaling after construction needs no lr from the factory: the optimizer has filled it in.
    """
    optimizer = make_optimizer(param_groups(net, layer_decay))
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
    return optimizer


def param_groups(net: nn.Module, layer_decay: float | None = None) -> list[dict]:
    """The trainable parameters in one group per (layer, decayed or not).

    Not decayed (``weight_decay: 0``): norm weights, biases (every 1-D tensor), position
    embeddings, tokens and whatever the backbone's ``no_weight_decay()`` names (the from-scratch
    ViT names its RPE masks there); shrinking them towards zero only hurts (as in timm and the ViT
    paper). Decayed groups set no ``weight_decay``, so the optimizer's own applies. ``lr_scale``
    is ``layer_decay ** (top layer - layer)`` with the layers of the backbone's ``group_matcher``
    (models/backbone.py): the head 1, the last block ``layer_decay``, and so on down to the
    embeddings; without ``layer_decay`` the net is one layer at scale 1.
    """
    net = uncompiled(net)  # the backbone's own names, which its no_weight_decay() and group_matcher() know
    if layer_decay is None:
        layers, layer_decay = {name: 0 for name, _ in net.named_parameters()}, 1.0
    else:
        layers = layer_ids(net)
    num_layers = max(layers.values(), default=0) + 1
    skip = set(net.no_weight_decay())
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        layer, decayed = layers[name], is_decayed(name, param, skip)
        if (layer, decayed) not in groups:
            groups[layer, decayed] = {"params": [], "lr_scale": layer_decay ** (num_layers - 1 - layer)}
            if not decayed:
                groups[layer, decayed]["weight_decay"] = 0.0
        groups[layer, decayed]["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def is_decayed(name: str, param: nn.Parameter, skip: set[str]) -> bool:
    """The rule above, for one parameter."""
    return not (param.ndim <= 1 or name in skip or any(part in name for part in NO_DECAY_NAME_PARTS))


def base_lr(optimizer: Optimizer) -> float:
    """The schedule's lr: that of the groups at ``lr_scale`` 1 (the head's under layer decay)."""
    group = max(optimizer.param_groups, key=lambda g: g.get("lr_scale", 1.0))
    return group["lr"] / group.get("lr_scale", 1.0)


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> WarmupCosine:
    """Linear warmup from ~0 to the base lr, then cosine decay to ``min_lr_ratio`` * base lr.

    Stepped once per optimizer step. Warmup is given in epochs (timm's habit) unless
    ``warmup_steps`` is set.
    """
    if warmup_steps is None:
        warmup_steps = round(warmup_epochs * steps_per_epoch)
    warmup_steps = min(max(int(warmup_steps), 0), max(total_steps - 1, 0))
    return WarmupCosine(optimizer, total_steps, warmup_steps, min_lr_ratio)


class WarmupCosine(LRScheduler):
    """The warmup-cosine schedule, which a run resumed with another length stretches.

    The cosine runs from ``decay_start`` (the end of warmup) at ``start_progress`` (0: the top)
    to ``total_steps`` at progress 1 (the minimum). A checkpoint holds these, so a resumed run
    goes on with its own curve; resumed with another ``trainer.max_epochs`` (another total),
    the rest of the cosine, from the progress reached, is spread over the steps that remain:
    the lr does not jump at the resume and reaches the minimum at the new end. A run resumed
    after its schedule ended stays at the minimum.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.decay_start = warmup_steps
        self.start_progress = 0.0
        super().__init__(optimizer)

    def progress(self, step: int) -> float:
        """How far down the cosine ``step`` is, from 0 (top) to 1 (the minimum)."""
        remaining = max(self.total_steps - self.decay_start, 1)
        done = min(max(step - self.decay_start, 0) / remaining, 1.0)
        return self.start_progress + (1.0 - self.start_progress) * done

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]

    def load_state_dict(self, state_dict: dict) -> None:
        total_steps = self.total_steps  # this run's length: the checkpoint's may differ
        super().load_state_dict(state_dict)
        if total_steps != self.total_steps:
            self.stretch(total_steps)

    def stretch(self, total_steps: int) -> None:
        """Spread the rest of the cosine, from this step on, over ``total_steps``."""
        step = self.last_epoch
        if step > self.warmup_steps:
            self.decay_start, self.start_progress = step, self.progress(step)
        if self.start_progress >= 1.0:
            log.warning(
                "this run had finished its lr schedule (%d steps): the %d steps added train at the "
                "minimum lr (min_lr_ratio=%s x lr)",
                self.total_steps,
                total_steps - step,
                self.min_lr_ratio,
            )
        else:
            log.info(
                "lr schedule: %d steps instead of %d; the rest of the cosine goes from step %d to the "
                "minimum at step %d",
                total_steps,
                self.total_steps,
                step,
                total_steps,
            )
        self.total_steps = total_steps

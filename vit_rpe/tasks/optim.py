"""Parameter groups and the learning-rate schedule shared by every backbone.

One builder makes the param groups of every run: a plain run is layer-wise decay with a single
layer. Groups hold only the exceptions (no weight decay here, a smaller lr there); the lr and
the weight decay themselves are the optimizer's, as its factory was configured, whatever kind
of callable that factory is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from vit_rpe.utils.checkpoint import uncompiled
from vit_rpe.utils.errors import ConfigError

NO_DECAY_NAME_PARTS = ("pos_embed", "cls_token", "dist_token", "reg_token", "position_embeddings")
VIT_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


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
    is ``layer_decay ** (top layer - layer)``: the head 1, the last block ``layer_decay``, and so
    on down to the embeddings; without ``layer_decay`` the net is one layer at scale 1.
    """
    net = uncompiled(net)  # the backbone's own names, which its no_weight_decay() and layer_id() know
    if layer_decay is None:
        num_layers, layer_id, layer_decay = 1, lambda name: 0, 1.0
    else:
        num_layers, layer_id = layer_numbering(net)
    skip = set(getattr(net, "no_weight_decay", lambda: set())())
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        layer, decayed = layer_id(name), is_decayed(name, param, skip)
        if (layer, decayed) not in groups:
            groups[layer, decayed] = {"params": [], "lr_scale": layer_decay ** (num_layers - 1 - layer)}
            if not decayed:
                groups[layer, decayed]["weight_decay"] = 0.0
        groups[layer, decayed]["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def is_decayed(name: str, param: nn.Parameter, skip: set[str]) -> bool:
    """The rule above, for one parameter."""
    return not (param.ndim <= 1 or name in skip or any(part in name for part in NO_DECAY_NAME_PARTS))


def layer_numbering(net: nn.Module) -> tuple[int, Callable[[str], int]]:
    """(number of layers, name -> layer id): the backbone's own (``num_layers``, ``layer_id``),
    else timm's ViT naming (embeddings 0, ``blocks.i`` i + 1, the final norm with the last block,
    the head last)."""
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
) -> LambdaLR:
    """Linear warmup from ~0 to the base lr, then cosine decay to ``min_lr_ratio`` * base lr.

    Stepped once per optimizer step. Warmup is given in epochs (timm's habit) unless
    ``warmup_steps`` is set.
    """
    if warmup_steps is None:
        warmup_steps = round(warmup_epochs * steps_per_epoch)
    warmup_steps = min(max(int(warmup_steps), 0), max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / decay_steps, 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)

"""Parameter groups and the learning-rate schedule shared by every backbone."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

NO_DECAY_NAME_PARTS = ("pos_embed", "cls_token", "dist_token", "reg_token", "position_embeddings")


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups.

    Norm weights, biases (every 1-D tensor), position embeddings and special tokens are not
    decayed: shrinking them towards zero only hurts (as in timm and the ViT paper).
    """
    skip = set(getattr(net, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        (decay if is_decayed(name, param, skip) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def is_decayed(name: str, param: nn.Parameter, skip: set[str]) -> bool:
    """The rule above, for one parameter (layer-wise decay groups use it too)."""
    return not (param.ndim <= 1 or name in skip or any(part in name for part in NO_DECAY_NAME_PARTS))


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

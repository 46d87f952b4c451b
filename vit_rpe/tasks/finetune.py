"""Fine-tuning: linear probing, a backbone frozen for the first epochs, layer-wise lr decay.

They work on any backbone (models/backbone.py: its head is ``get_classifier()``, its layers
``group_matcher()``); the freezing is in callbacks/freeze.py, and the param groups of layer-wise
decay are built in tasks/optim.py, like those of every run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import lightning as L
from torch import nn

from vit_rpe.callbacks.freeze import FreezeBackbone, set_backbone_trainable
from vit_rpe.utils.errors import ConfigError

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

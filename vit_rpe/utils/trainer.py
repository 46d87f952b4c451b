"""Build the Lightning Trainer from its config, with hardware problems said in config terms."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from vit_rpe.utils.errors import ConfigError


def available_hardware() -> str:
    cuda = torch.cuda.device_count()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    parts = [f"{cuda} CUDA GPU{'s' if cuda != 1 else ''}"] + (["Apple MPS"] if mps else []) + ["CPU"]
    return ", ".join(parts)


def instantiate_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """``instantiate(cfg.trainer)``; an accelerator this machine lacks is a ConfigError."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (MisconfigurationException, RuntimeError, ValueError)):
            raise ConfigError(
                f"trainer (accelerator={cfg.get('accelerator')}, devices={cfg.get('devices')}, "
                f"strategy={cfg.get('strategy', 'auto')}): {cause}. This machine has {available_hardware()}: "
                "use trainer=auto, trainer=cpu, or fewer trainer.devices"
            ) from None
        raise

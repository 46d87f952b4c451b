"""Model EMA (``model.ema_decay``): Lightning's EMAWeightAveraging, reporting both weights.

Lightning's callback keeps an exponential moving average of the weights, saves it as the
checkpoint's ``state_dict`` (the live weights go to ``current_model_state``, so resuming restores
both) and copies it into the model when training ends. Two things differ here:

- validation scores both: ``val/acc`` for the live weights (the task's own step, unchanged) and
  ``val/acc_ema`` for the average, and the best checkpoint is chosen by ``val/acc_ema``, since it
  holds the average's weights (the test then scores those);
- buffers and extra states are the live model's, not averaged: ours are fixed tables,
  Performer's random features (an average of two feature draws is no feature draw) and the
  run's record of its epochs.
"""

from __future__ import annotations

import warnings

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from vit_rpe.utils.errors import ConfigError

MONITOR_LIVE, MONITOR_EMA = "val/acc", "val/acc_ema"


def check_ema_decay(decay: float) -> float:
    if not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise ConfigError(f"model.ema_decay={decay!r} must be in (0, 1), e.g. 0.999 (or null: no EMA)")
    return float(decay)


class ModelEMA(EMAWeightAveraging):
    """An EMA of the weights, updated after every optimizer step, scored as ``val/acc_ema``."""

    def __init__(self, decay: float):
        super().__init__(decay=check_ema_decay(decay), use_buffers=False)
        self.decay = decay
        self._correct = self._total = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        with warnings.catch_warnings():
            # our configure_model only compiles (model.compile=true): nothing is sharded
            warnings.filterwarnings("ignore", message=".*overrides the configure_model.*")
            super().setup(trainer, pl_module, stage)
        for checkpoint in trainer.checkpoint_callbacks:
            if getattr(checkpoint, "monitor", None) == MONITOR_LIVE:
                checkpoint.monitor = MONITOR_EMA  # the checkpoint holds the average: keep its best

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._average_model is not None:
            with torch.no_grad():
                for average, live in zip(self._average_model.module.buffers(), pl_module.buffers()):
                    average.copy_(live)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._average_model is not None:  # outside fit (the test) the checkpoint's weights are the average
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # A stop by signal saves in LastCheckpoint's on_train_batch_end, which can run before ours:
        # take this step's update first (a no-op when it is done), or the resumed average misses it.
        if self._average_model is not None and trainer.training:
            self.on_train_batch_end(trainer, pl_module, None, None, 0)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        # Extra states (the run record, a Performer's redraw plan) are the live model's, as buffers are.
        live = checkpoint.get("current_model_state", {})
        checkpoint["state_dict"] |= {k: v for k, v in live.items() if k.endswith("_extra_state")}

    # Lightning swaps the average in for the whole validation; we score it beside the live weights.
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._correct = torch.zeros((), dtype=torch.long, device=pl_module.device)
        self._total = torch.zeros((), dtype=torch.long, device=pl_module.device)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ):
        if self._average_model is None:
            return
        images, labels = batch
        with torch.inference_mode():
            logits = self._average_model.module(images)
        self._correct += (logits.argmax(-1) == labels).sum()
        self._total += labels.numel()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._average_model is None or self._total is None:
            return
        correct = trainer.strategy.reduce(self._correct.float(), reduce_op="sum")
        total = trainer.strategy.reduce(self._total.float(), reduce_op="sum")
        pl_module.log(MONITOR_EMA, correct / total.clamp(min=1), prog_bar=True)

"""Every Lightning callback of vit_rpe, one module per concern.

- ``safety``: a run is safe to stop and to resume (``NonFiniteLossGuard``, ``LastCheckpoint``,
  ``StepSeed``): the default callbacks (conf/callbacks/default.yaml).
- ``ema``: an average of the weights, scored as ``val/acc_ema`` (``ModelEMA``, from ``model.ema_decay``).
- ``freeze``: a backbone trained head-first (``FreezeBackbone``, from ``model.finetune``).
- ``predictions``: W&B's confusion matrix and sample predictions at test end
  (``WandbTestPredictions``, with ``logger=wandb``).
- ``timing``: wall and CPU seconds of every training epoch (``EpochClock``, added by
  ``python -m vit_rpe.bench epoch``).

Configs name them by their short path (``vit_rpe.callbacks.LastCheckpoint``).
"""

from vit_rpe.callbacks.ema import ModelEMA
from vit_rpe.callbacks.freeze import FreezeBackbone
from vit_rpe.callbacks.predictions import WandbTestPredictions
from vit_rpe.callbacks.safety import LastCheckpoint, NonFiniteLossGuard, StepSeed
from vit_rpe.callbacks.timing import EpochClock

__all__ = [
    "EpochClock",
    "FreezeBackbone",
    "LastCheckpoint",
    "ModelEMA",
    "NonFiniteLossGuard",
    "StepSeed",
    "WandbTestPredictions",
]

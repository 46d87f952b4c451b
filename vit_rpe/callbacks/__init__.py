"""Every Lightning callback of vit_rpe, one module per concern.

- ``nan_guard``: a NaN/inf loss stops training before it reaches the weights (``NonFiniteLossGuard``).
- ``last_checkpoint``: ``last.ckpt`` is the latest epoch's end, and a stop by SIGINT or SIGTERM
  saves it and exits 128 + signal with the resume command (``LastCheckpoint``).
- ``step_seed``: every batch's random draws from (seed, rank, epoch, batch), so a resumed run
  draws what an uninterrupted one would (``StepSeed``). These three are the default callbacks
  (conf/callbacks/default.yaml), which make a run safe to stop and to resume.
- ``ema``: an average of the weights, scored as ``val/acc_ema`` (``ModelEMA``, from ``model.ema_decay``).
- ``freeze``: a backbone trained head-first (``FreezeBackbone``, from ``model.finetune``).
- ``predictions``: W&B's confusion matrix and sample predictions at test end
  (``WandbTestPredictions``, with ``logger=wandb``).
- ``per_class``: ``per_class.csv`` and ``confusion_matrix.png`` at every test end
  (``PerClassResults``, added by the classifier itself).

Configs name them by their short path (``vit_rpe.callbacks.LastCheckpoint``).
"""

from vit_rpe.callbacks.ema import ModelEMA
from vit_rpe.callbacks.freeze import FreezeBackbone
from vit_rpe.callbacks.last_checkpoint import LastCheckpoint
from vit_rpe.callbacks.nan_guard import NonFiniteLossGuard
from vit_rpe.callbacks.per_class import PerClassResults
from vit_rpe.callbacks.predictions import WandbTestPredictions
from vit_rpe.callbacks.step_seed import StepSeed

__all__ = [
    "FreezeBackbone",
    "LastCheckpoint",
    "ModelEMA",
    "NonFiniteLossGuard",
    "PerClassResults",
    "StepSeed",
    "WandbTestPredictions",
]

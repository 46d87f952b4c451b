"""Stop training on a NaN/inf loss before it reaches the weights: no checkpoint is written with them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from vit_rpe.utils.errors import UserError


class NonFiniteLossError(UserError):
    """Training diverged: the loss is NaN or infinite."""


class NonFiniteLossGuard(L.Callback):
    """Stop on a non-finite training loss before backward, so the weights are never touched.

    The check runs before ``backward``: no NaN gradient reaches the optimizer, and since the
    run stops with an error, no checkpoint callback writes ``last.ckpt`` afterwards; the last
    good checkpoint stays what it was. In a distributed job the ranks agree (one all-reduce of
    a flag per step), so all of them stop together instead of hanging in a collective.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        checkpoint = trainer.checkpoint_callback
        last = Path(checkpoint.dirpath) / "last.ckpt" if checkpoint and checkpoint.dirpath else None
        kept = f"the last good checkpoint is {last}" if last and last.is_file() else "no checkpoint was saved"
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        raise NonFiniteLossError(
            f"the training loss is {loss.detach().float().mean().item()} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {batch}); training stopped and {kept}. "
            "Lower model.optimizer.lr, keep trainer.gradient_clip_val set, or trainer.precision=32-true"
        )

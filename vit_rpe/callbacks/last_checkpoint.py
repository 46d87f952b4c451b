"""``last.ckpt`` is the end of the latest epoch, and a stop by signal saves it and says how to resume.

SIGINT (Ctrl+C) or SIGTERM (SLURM, Kubernetes) saves it at the next batch boundary and exits;
``resume_dir=<run dir>`` continues from it.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("vit_rpe.callbacks")

# Exit statuses of a process stopped by a signal, as shells report them (128 + signal number).
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class LastCheckpoint(L.Callback):
    """Keep ``<dirpath>/last.ckpt`` the latest state of the run, and save it on SIGINT or SIGTERM.

    Lightning 2.6's ModelCheckpoint refreshes ``last.ckpt`` only when it also saves a top-k
    checkpoint, so a run resumed from it could go back epochs; this callback owns ``last.ckpt``
    instead (ModelCheckpoint keeps the best ones). It writes at the end of every training epoch,
    to a temporary file renamed into place, so a kill during the write leaves the previous one.

    Signals: Lightning turns SIGTERM into a flag (broadcast from rank 0); this callback treats
    SIGINT (Ctrl+C) the same way (a second Ctrl+C interrupts at once). Wherever the signal lands,
    the run stops at the next hook of this callback (a training or validation batch, the epoch's
    end, the end of fit, a test batch), writes the checkpoint if training has moved on since the
    last one (not in validation: see ``save_if_moved_on``), says how to resume, and ends the
    process with 128 + signal. At a training batch's end it saves at once and exits at the next
    hook, after Lightning has logged the batch (public hooks only, no private Lightning call).
    The checkpoint holds Lightning's loop state, so a mid-epoch checkpoint resumes mid-epoch.
    Lightning's own stop on SIGTERM (``SIGTERMException``, a SystemExit with status 0) gets the
    same checkpoint here and its status from ``exit_status_on_sigterm``.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self._sigint = False
        self._previous_handler: Any = None
        self._saved_step: int | None = None
        self._stop_before_next_batch: int | None = None

    # Not on_fit_start: Lightning saves the handlers after it and puts them back at teardown.
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_before_next_batch = None
        self._catch_sigint()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._catch_sigint()

    def _catch_sigint(self) -> None:
        self._sigint = False
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        log.warning("interrupted: stopping after this batch (Ctrl+C again to stop at once)")
        self._sigint = True
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            tmp.replace(self.path)
        trainer.strategy.barrier("last_checkpoint")
        self._saved_step = trainer.global_step

    def stop_status(self, trainer: L.Trainer) -> int | None:
        """128 + signal when a stop was asked for, on any rank (all ranks agree, so that they stop
        at the same hook instead of one waiting for the others in a collective), else None."""
        sigint, sigterm = self._sigint, trainer.received_sigterm
        if trainer.world_size > 1:
            sigint = trainer.strategy.reduce_boolean_decision(sigint, all=False)
            sigterm = trainer.strategy.reduce_boolean_decision(sigterm, all=False)
        if sigint:
            return EXIT_SIGINT
        return EXIT_SIGTERM if sigterm else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if status := self.stop_status(trainer):
            self.save(trainer)  # also between the steps of an accumulated batch
            # Exit at the next hook, once Lightning has logged this batch's step metrics: the
            # resumed run starts at the next batch, and its log equals an uninterrupted one.
            self._stop_before_next_batch = status

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._stop_before_next_batch:  # every rank agreed at the batch's end
            self.stop(trainer, self._stop_before_next_batch)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if status := self.stop_status(trainer):
            self.stop(trainer, status)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.fast_dev_run:  # debug=fdr checkpoints nothing
            reduce_epoch_metrics(trainer)
            self.save(trainer)
        if status := self.stop_status(trainer):
            self.stop(trainer, status)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self._restore_handler()
        if status := self.stop_status(trainer):  # a signal after the last epoch's end: no test
            self.stop(trainer, status)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if status := self.stop_status(trainer):
            self.stop(trainer, status)

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        self._restore_handler()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        # Lightning's own stop on SIGTERM, at a point this callback's hooks did not see.
        if isinstance(exception, SIGTERMException):
            self.save_if_moved_on(trainer)
            self.say_how_to_resume(trainer)
        self._restore_handler()

    def save_if_moved_on(self, trainer: L.Trainer) -> None:
        """Save while training, unless ``last.ckpt`` already holds this step (the epoch's end).

        Not during validation: the module may hold weights swapped in for it (an EMA average), and
        the last checkpoint (this epoch's start or a batch of it) resumes exactly all the same.
        """
        evaluating = trainer.validating or trainer.sanity_checking or trainer.testing
        fitting = trainer.state.fn == "fit" and not evaluating and not trainer.fast_dev_run
        if fitting and trainer.global_step != self._saved_step:
            self.save(trainer)

    def stop(self, trainer: L.Trainer, status: int) -> None:
        self.save_if_moved_on(trainer)
        self.say_how_to_resume(trainer)
        self._restore_handler()
        raise SystemExit(status)

    def say_how_to_resume(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        if not self.path.is_file():
            log.warning(
                "stopped before the first checkpoint (%s): nothing to resume, start the run again", self.path
            )
            return
        log.warning(
            "stopped at step %d (epoch %d, while %s); last checkpoint: %s. Resume with: "
            "python -m vit_rpe.train resume_dir=%s",
            trainer.global_step,
            trainer.current_epoch,
            "testing"
            if trainer.testing
            else "validating"
            if trainer.validating or trainer.sanity_checking
            else "training",
            self.path,
            self.path.parent.parent,
        )


@contextmanager
def exit_status_on_sigterm():
    """Lightning ends a run stopped by SIGTERM with ``SIGTERMException``, a SystemExit with status
    0: to a scheduler (SLURM) a success. A stop by signal is not one: 128 + SIGTERM."""
    try:
        yield
    except SIGTERMException:
        log.warning("stopped by SIGTERM")
        raise SystemExit(EXIT_SIGTERM) from None


def reduce_epoch_metrics(trainer: L.Trainer) -> None:
    """Reduce the epoch's logged metrics across ranks now, on every rank, before a collective.

    Lightning reduces them (a collective) when they are first read. A progress bar reads them on
    rank 0 alone, in its ``on_train_epoch_end``; rank 0 then waits in that reduction, and the
    next collective of the other ranks (a checkpoint's barrier, a metric sync) would meet it
    with other tensors: gloo aborts ("Received data size doesn't match expected size") or NCCL
    hangs. Every reader reduces all the metrics in the same order, so reading them here on every
    rank meets rank 0's reduction; rank 0, already done, reads its results. (ModelCheckpoint and
    EarlyStopping read them first too.)
    """
    _ = trainer.callback_metrics

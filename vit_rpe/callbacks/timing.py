"""Per-epoch timing for benchmarks: ``python -m vit_rpe.bench epoch`` adds ``EpochClock`` to a run."""

from __future__ import annotations

import time

import lightning as L


class EpochClock(L.Callback):
    """Wall and process CPU seconds of every training epoch, from its start to the end of its last
    batch (the span the task's ``seconds_per_epoch`` covers), appended to ``EpochClock.epochs``.

    CPU seconds are what other jobs on a shared machine disturb least; a class-level list, because
    the benchmark reads it after ``train(cfg)`` built and dropped the callback.
    """

    epochs: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = self.end = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        EpochClock.epochs.append((self.end[0] - self.start[0], self.end[1] - self.start[1]))

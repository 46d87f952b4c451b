"""Every random draw of a training step comes from (seed, rank, epoch, batch): a resumed run draws
what an uninterrupted one would have, and each rank of a distributed job draws differently."""

from __future__ import annotations

import hashlib
import random

import lightning as L
import numpy as np
import torch


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, with no collisions in practice (unlike seed + rank + step)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StepSeed(L.Callback):
    """Seed torch, numpy, random and the datamodule's augmentation generator before every batch.

    The seed is a function of (seed, global rank, epoch, batch index), so the draws of a batch
    do not depend on what ran before it in this process: a run resumed from a checkpoint (at an
    epoch boundary or mid-epoch) draws the same dropout masks and augmentations as one that never
    stopped, and the ranks of a distributed job draw differently from each other. Augmentation
    runs when the batch is moved to the device, before ``on_train_batch_start``, so the seed for
    batch ``b + 1`` is set at the end of batch ``b`` (and at the start of an epoch or a run).
    """

    def __init__(self, seed: int):
        self.seed = seed

    def reseed(self, trainer: L.Trainer, batch_idx: int) -> None:
        step_seed = derived_seed(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx)
        torch.manual_seed(step_seed)
        random.seed(step_seed)
        np.random.seed(step_seed % 2**32)
        transform = getattr(trainer.datamodule, "transform", None)
        generator = getattr(transform, "generator", None)
        if generator is not None:
            generator.manual_seed(step_seed)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        # A run resumed mid-epoch continues after the last batch processed. (Not ``completed``:
        # a checkpoint saved in on_train_batch_end counts its batch as completed only on resume,
        # after this hook.)
        self.reseed(trainer, trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self.reseed(trainer, 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.reseed(trainer, batch_idx + 1)

"""Data-parallel training (``trainer=ddp_sim``: 2 CPU processes over gloo) equals one process.

With a global batch split across 2 ranks, DistributedSampler hands the ranks the same examples a
single process with twice the batch size sees (same seed, same epoch order), and DDP averages the
gradients, so without per-rank randomness (no drop path, no augmentation) the two runs take the
same steps up to float summation order. Validation is sharded the same way and the accuracy
metric is synced across ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FAST, compose_config
from vit_rpe.train import train

# The tiny FAST settings, but 2 epochs x 4 steps, no drop path, and a quicker start.
REPLACED = ("trainer=", "trainer.max_epochs", "trainer.limit_train_batches")
COMMON = (
    *(o for o in FAST if not o.startswith(REPLACED)),
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "test=false",  # each ddp_spawn stage starts 2 processes: one (fit) keeps the test quick
    "model.net.drop_path_rate=0.0",
    "model.optimizer.lr=3e-3",
    "model.scheduler.warmup_epochs=0",
    "model.label_smoothing=0",
    # cls pooling skips the last block's mask (VisionTransformer.forward_features): DDP must still
    # see a gradient for every parameter, or it stops with "parameters that were not used".
    "rpe=exp",
)
GLOBAL_BATCH = 32


def test_ddp_sim_matches_one_process(tmp_path):
    single = train(
        compose_config(
            "train",
            [
                "trainer=cpu",
                f"data.batch_size={GLOBAL_BATCH}",
                f"+data.eval_batch_size={GLOBAL_BATCH}",
                *COMMON,
            ],
            tmp_path / "single",
        )
    )
    ddp_dir = tmp_path / "ddp"
    half = GLOBAL_BATCH // 2  # data.batch_size is per device
    ddp = train(
        compose_config(
            "train",
            ["trainer=ddp_sim", f"data.batch_size={half}", f"+data.eval_batch_size={half}", *COMMON],
            ddp_dir,
        )
    )
    # Measured: val/loss equal to the last digit, train/loss 1e-7 apart (summation order).
    assert ddp["val/acc"] == pytest.approx(single["val/acc"], abs=1 / 64)  # at most one image apart
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-4)
    assert ddp["train/loss"] == pytest.approx(single["train/loss"], rel=1e-4)
    # One run directory, written once, with one metrics.json and the run's checkpoints.
    written = json.loads((ddp_dir / "metrics.json").read_text())
    assert written["val/acc"] == ddp["val/acc"]
    # The run summary comes back from the worker processes (it used to read epochs 0, no speed).
    assert written["epochs"] == single["epochs"] == 2
    assert written["seconds_per_epoch"] > 0 and written["train_images_per_sec"] > 0
    assert not any(key.startswith("run/") for key in written)
    assert (ddp_dir / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["ddp", "single"]

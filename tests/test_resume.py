"""Exact resume: a run stopped and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from tests.conftest import FAST, compose_config
from vit_rpe.callbacks import EXIT_SIGINT
from vit_rpe.train import train

# Three planned epochs of three batches, with every source of randomness switched on:
# shuffling, random crops, flips, drop path.
RUN = (
    "trainer.max_epochs=3",
    "data.crop_padding=1",
    "data.hflip=0.5",
    "model.net.drop_path_rate=0.2",
    "model.net.depth=2",
)
COMPARED = ("val/acc", "val/loss", "test/acc", "test/loss", "train/loss")


class Crash(L.Callback):
    """Dies at the start of an epoch, as a killed process would: nothing is saved on the way out."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class Interrupt(L.Callback):
    """Sends this process SIGINT in the middle of an epoch, as Ctrl+C would."""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGINT):
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def run_with(cfg, callback: L.Callback):
    """train(cfg) with one extra callback (the fault injected by the test)."""
    with open_dict(cfg):
        cfg.callbacks["fault"] = {"_target_": f"{__name__}.{type(callback).__name__}", **callback.__dict__}
    return train(cfg)


def test_crash_and_resume_equals_uninterrupted(train_config, tmp_path):
    straight = train_config(*RUN)
    expected = train(straight)
    straight_dir = Path(straight.paths.output_dir)

    run_dir = tmp_path / "crashed"
    crashed = compose_config("train", [*FAST, *RUN], run_dir)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with(crashed, Crash(epoch=1))
    assert weights(run_dir / "checkpoints" / "last.ckpt") is not None

    resumed = train(compose_config("train", [f"resume_dir={run_dir}", "+callbacks.fault=null"], run_dir))

    for key in COMPARED:
        assert resumed[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    assert resumed["epochs"] == expected["epochs"] == 3
    got, want = (
        weights(run_dir / "checkpoints" / "last.ckpt"),
        weights(straight_dir / "checkpoints" / "last.ckpt"),
    )
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    # The CSV log of the resumed run holds all three epochs, once each.
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    val_epochs = [int(float(r["epoch"])) for r in rows if r.get("val/acc")]
    assert val_epochs == [0, 1, 2]


def test_sigint_mid_epoch_saves_a_checkpoint_and_resumes(tmp_path):
    run_dir = tmp_path / "interrupted"
    cfg = compose_config("train", [*FAST, *RUN], run_dir)
    with pytest.raises(SystemExit) as stopped:
        run_with(cfg, Interrupt(epoch=1, batch=1))
    assert stopped.value.code == EXIT_SIGINT
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 5  # 3 batches of epoch 0, 2 of epoch 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back

    metrics = train(compose_config("train", [f"resume_dir={run_dir}", "+callbacks.fault=null"], run_dir))
    assert metrics["epochs"] == 3
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 9


def test_sigterm_mid_epoch_saves_a_checkpoint(tmp_path):
    run_dir = tmp_path / "terminated"
    cfg = compose_config("train", [*FAST, *RUN], run_dir)
    with pytest.raises(SystemExit):
        run_with(cfg, Interrupt(epoch=0, batch=1, signum=signal.SIGTERM))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2


def test_resume_applies_overrides_and_refuses_group_switches(train_config, tmp_path):
    cfg = train_config("trainer.max_epochs=1")
    run_dir = Path(cfg.paths.output_dir)
    train(cfg)
    more = train(compose_config("train", [f"resume_dir={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert more["epochs"] == 2
    from vit_rpe.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="drop model=vit"):
        train(compose_config("train", [f"resume_dir={run_dir}", "model=vit"], run_dir))

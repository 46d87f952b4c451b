"""model.ema_decay: the average follows its formula, is scored beside the live weights, is what the
best checkpoint and the test hold, and resumes exactly."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from tests.conftest import FAST, LEARNS, compose_config
from tests.helpers import recorded_epochs_and_images
from vit_rpe.callbacks.ema import ModelEMA
from vit_rpe.tasks.run_record import STATE_KEY, read_run_record
from vit_rpe.train import train
from vit_rpe.utils.errors import ConfigError

EMA = ("model.ema_decay=0.8", "trainer.max_epochs=3", *LEARNS, "model.net.patch_size=4")


class RecordLiveWeights(L.Callback):
    """The live weights after every optimizer step (class-level: the test reads them after train)."""

    steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RecordLiveWeights.steps.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})


class StopMidEpoch(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGINT)


def with_callback(cfg, name: str, target: type):
    with open_dict(cfg):
        cfg.callbacks[name] = {"_target_": f"{__name__}.{target.__name__}"}
    return cfg


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_checkpoint_holds_the_average_of_the_live_weights(tmp_path):
    RecordLiveWeights.steps = []
    run_dir = tmp_path / "run"
    cfg = compose_config("train", [*FAST, *EMA, "trainer.max_epochs=1"], run_dir)
    train(with_callback(cfg, "record", RecordLiveWeights))
    steps = RecordLiveWeights.steps
    assert len(steps) == 3
    average = dict(steps[0])  # the first update copies the weights; then ema = d * ema + (1 - d) * w
    for live in steps[1:]:
        average = {k: 0.8 * average[k] + 0.2 * live[k] for k in average}
    saved = checkpoint(run_dir / "checkpoints" / "last.ckpt")
    for name, value in average.items():
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(saved["current_model_state"][name], steps[-1][name])
    assert not torch.equal(saved["state_dict"]["net.head.weight"], steps[-1]["net.head.weight"])
    # the run's record is the live model's, not the copy the average was made from
    assert len(read_run_record(run_dir / "checkpoints" / "last.ckpt")) == 1


def test_validation_scores_both_and_the_best_checkpoint_is_the_averages(train_config, tmp_path):
    metrics = train(train_config(*EMA))
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    ema = {int(r["epoch"]): float(r["val/acc_ema"]) for r in rows if r.get("val/acc_ema")}
    live = {int(r["epoch"]): float(r["val/acc"]) for r in rows if r.get("val/acc")}
    assert sorted(ema) == sorted(live) == [0, 1, 2]
    best_epoch = max(ema, key=lambda e: (ema[e], -e))
    assert Path(metrics["best_ckpt"]).name == f"epoch_{best_epoch:03d}.ckpt"
    assert metrics["val/acc_ema"] == pytest.approx(ema[2])
    assert metrics["test/acc"] > 0.3, (ema, live, metrics)  # ten classes: it learned
    assert checkpoint(metrics["best_ckpt"])["hyper_parameters"]["ema_decay"] == 0.8


def test_a_run_stopped_mid_epoch_resumes_its_average_exactly(tmp_path):
    straight_dir, stopped_dir = tmp_path / "straight", tmp_path / "stopped"
    expected = train(compose_config("train", [*FAST, *EMA], straight_dir))
    cfg = with_callback(compose_config("train", [*FAST, *EMA], stopped_dir), "fault", StopMidEpoch)
    with pytest.raises(SystemExit):
        train(cfg)
    resumed = train(
        compose_config("train", [f"resume_dir={stopped_dir}", "+callbacks.fault=null"], stopped_dir)
    )
    for key in ("val/acc", "val/acc_ema", "test/acc", "test/loss"):
        assert resumed[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    want, got = (checkpoint(d / "checkpoints" / "last.ckpt") for d in (straight_dir, stopped_dir))
    for part in ("state_dict", "current_model_state"):
        for name, value in want[part].items():
            if name != STATE_KEY:  # the record's timings differ: compared below without them
                torch.testing.assert_close(got[part][name], value, rtol=1e-5, atol=1e-6)
    assert recorded_epochs_and_images(
        stopped_dir / "checkpoints" / "last.ckpt"
    ) == recorded_epochs_and_images(straight_dir / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, "high"])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ConfigError, match=r"model.ema_decay=.* must be in \(0, 1\)"):
        ModelEMA(decay)

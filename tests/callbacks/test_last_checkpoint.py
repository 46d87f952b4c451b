"""A stop by SIGINT or SIGTERM, wherever in the run it lands, exits 128 + signal, says how to
resume, and leaves a checkpoint that the resumed run finishes from."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import lightning as L
import pytest
from omegaconf import open_dict

from tests.conftest import FAST, compose_config, run_train_main
from vit_rpe.callbacks.last_checkpoint import EXIT_SIGINT, EXIT_SIGTERM
from vit_rpe.train import train

# Two epochs of two batches, validated and tested on two batches each.
RUN = [
    *(o for o in FAST if o != "trainer.max_epochs=1"),
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
]


class SignalAt(L.Callback):
    """Sends this process ``signum`` once, from ``hook`` (in ``epoch``, None: any): where the stop lands."""

    def __init__(self, hook: str, signum: int, epoch: int | None = 0):
        self.hook, self.signum, self.epoch, self.sent = hook, signum, epoch, False

    def fire(self, trainer: L.Trainer, hook: str) -> None:
        if hook == self.hook and self.epoch in (None, trainer.current_epoch) and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.fire(trainer, "training batch")

    def on_train_epoch_end(self, trainer, pl_module):  # runs after LastCheckpoint's: Lightning stops
        self.fire(trainer, "epoch end")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.fire(trainer, "validation")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.fire(trainer, "checkpoint save")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.fire(trainer, "test")


HOOKS = ["training batch", "epoch end", "validation", "checkpoint save", "test"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
@pytest.mark.parametrize("hook", HOOKS)
def test_a_stop_by_signal_exits_non_zero_says_how_to_resume_and_resumes(tmp_path, caplog, hook, signum):
    run_dir = tmp_path / "run"
    cfg = compose_config("train", RUN, run_dir)
    # The last epoch's end: no batch follows to stop at. Validation: in epoch 1, after the first
    # checkpoint (validation saves none). Testing restores the best epoch's counters.
    epoch = {"epoch end": 1, "validation": 1, "test": None}.get(hook, 0)
    with open_dict(cfg):
        cfg.callbacks["fault"] = {
            "_target_": f"{__name__}.SignalAt",
            "hook": hook,
            "signum": signum,
            "epoch": epoch,
        }
    before = signal.getsignal(signal.SIGINT)
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stopped:
        train(cfg)
    assert stopped.value.code == (EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before  # handler given back
    assert f"Resume with: python -m vit_rpe.train resume_dir={run_dir}" in caplog.text
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "metrics.json").exists()  # a stopped run has no results yet

    resumed = train(compose_config("train", [f"resume_dir={run_dir}", "+callbacks.fault=null"], run_dir))
    assert resumed["epochs"] == 2 and "test/acc" in resumed
    assert json.loads((Path(run_dir) / "metrics.json").read_text())["epochs"] == 2


def test_the_command_line_exits_143_on_sigterm_at_an_epoch_end(tmp_path, monkeypatch):
    """Through Hydra's main, as SLURM sees it: Lightning's stop at the last epoch's end (the case
    that exited 0 with no results) is status 143 with the resume command."""
    run_dir = tmp_path / "run"
    fault = f"{{_target_:{__name__}.SignalAt,hook:epoch end,signum:{int(signal.SIGTERM)},epoch:1}}"
    code = run_train_main(
        *RUN, f"+callbacks.fault={fault}", f"hydra.run.dir={run_dir}", monkeypatch=monkeypatch
    )
    assert code == EXIT_SIGTERM
    assert f"Resume with: python -m vit_rpe.train resume_dir={run_dir}" in (run_dir / "run.log").read_text()
    assert not (run_dir / "metrics.json").exists()


def test_a_stop_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, caplog):
    run_dir = tmp_path / "run"
    cfg = compose_config("train", RUN, run_dir)
    fault = {"_target_": f"{__name__}.SignalAt", "hook": "validation", "signum": signal.SIGTERM, "epoch": 0}
    with open_dict(cfg):
        cfg.callbacks["fault"] = fault
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stopped:
        train(cfg)
    assert stopped.value.code == EXIT_SIGTERM
    assert "stopped before the first checkpoint" in caplog.text and "nothing to resume" in caplog.text
    assert "Resume with" not in caplog.text
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()

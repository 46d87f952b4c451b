"""Exact resume: a run stopped and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import logging
import math
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict
from torch.multiprocessing import ProcessExitedException

from tests.conftest import FAST, compose_config
from tests.helpers import Crash, recorded_epochs_and_images
from vit_rpe.callbacks.last_checkpoint import EXIT_SIGINT, EXIT_SIGTERM
from vit_rpe.tasks.optim import warmup_cosine
from vit_rpe.tasks.run_record import STATE_KEY
from vit_rpe.train import train
from vit_rpe.utils.checkpoint import read_checkpoint

# Three planned epochs of three batches, with every source of randomness switched on:
# shuffling, random crops, flips, drop path. Batch size, lr, warmup and pooling are pinned (not the digits
# recipe's): with these, epoch 1 is the best, which a resumed run must still know.
RUN = (
    "trainer.max_epochs=3",
    "data.batch_size=64",
    "model.optimizer.lr=1e-3",
    "model.scheduler.warmup_epochs=1",
    "model.net.pool=cls",
    "data.crop_padding=1",
    "data.hflip=0.5",
    "model.net.drop_path_rate=0.2",
    "model.net.depth=2",
)
COMPARED = ("val/acc", "val/loss", "val/acc_best", "test/acc", "test/loss", "train/loss", "train/acc")
TIMINGS = ("train/epoch_time", "train/images_per_sec")


class Interrupt(L.Callback):
    """Sends this process SIGINT in the middle of an epoch, as Ctrl+C would."""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGINT):
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (the run record, with its timings, is compared apart)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {name: value for name, value in state.items() if name != STATE_KEY}


def run_with(cfg, callback: L.Callback):
    """train(cfg) with one extra callback (the fault injected by the test)."""
    with open_dict(cfg):
        cfg.callbacks["fault"] = {
            "_target_": f"{type(callback).__module__}.{type(callback).__name__}",
            **callback.__dict__,
        }
    return train(cfg)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the RUN trained straight through, once for this file. -> (metrics, run dir)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    return train(compose_config("train", [*FAST, *RUN], run_dir)), run_dir


def logged(run_dir: Path) -> dict[tuple[str, str, str], float]:
    """(epoch, step, metric) -> value, for every value of the CSV log but timings; each once."""
    table: dict[tuple[str, str, str], float] = {}
    for row in csv.DictReader((run_dir / "csv" / "metrics.csv").open()):
        for key, value in row.items():
            if value and key not in ("epoch", "step", *TIMINGS):
                at = (row["epoch"], row["step"], key)
                assert at not in table, f"{at} logged twice"
                table[at] = float(value)
    return table


def assert_same_run(resumed: dict, run_dir: Path, uninterrupted) -> None:
    """Final metrics, every logged value (each step, each epoch) and every final weight agree."""
    expected, straight_dir = uninterrupted
    for key in (key for key in COMPARED if key in expected):  # no test/* with test=false
        assert resumed[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    assert resumed["epochs"] == expected["epochs"]
    assert Path(resumed["best_ckpt"]).name == Path(expected["best_ckpt"]).name  # the one tested
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (straight_dir / "checkpoints").iterdir()
    )
    got, want = logged(run_dir), logged(straight_dir)
    assert sorted(got) == sorted(want)
    assert {epoch for epoch, _, _ in want} >= {"0", "1", "2"}
    assert {key for _, _, key in want} >= {"train/loss", "train/acc", "train/lr", "val/loss", "val/acc"}
    for at in want:
        assert got[at] == pytest.approx(want[at], rel=1e-5, abs=1e-6), at
    final = weights(run_dir / "checkpoints" / "last.ckpt")
    for name, reference in weights(straight_dir / "checkpoints" / "last.ckpt").items():
        torch.testing.assert_close(final[name], reference, rtol=1e-5, atol=1e-6)
    # every epoch recorded once, with all its images, the part before the stop included
    assert recorded_epochs_and_images(run_dir / "checkpoints" / "last.ckpt") == recorded_epochs_and_images(
        straight_dir / "checkpoints" / "last.ckpt"
    )


def resume(run_dir: Path) -> dict:
    return train(compose_config("train", [f"resume_dir={run_dir}", "+callbacks.fault=null"], run_dir))


@pytest.mark.parametrize("workers", [0, 1])
def test_crash_and_resume_equals_uninterrupted(uninterrupted, tmp_path, workers):
    """Killed at the start of epoch 2 and resumed from the end of epoch 1, the best epoch, which
    the resumed run must still know as the best. A loader worker would draw the order of the
    resumed epoch as soon as Lightning creates the iterator, before the sampler's epoch is set."""
    assert Path(uninterrupted[0]["best_ckpt"]).name == "epoch_001.ckpt"
    run_dir = tmp_path / "crashed"
    cfg = compose_config("train", [*FAST, *RUN, f"data.num_workers={workers}"], run_dir)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with(cfg, Crash(epoch=2))
    assert weights(run_dir / "checkpoints" / "last.ckpt") is not None
    assert_same_run(resume(run_dir), run_dir, uninterrupted)


@pytest.mark.parametrize(
    "signum, workers",
    [
        pytest.param(signal.SIGINT, 0, id="sigint"),
        pytest.param(signal.SIGTERM, 0, id="sigterm"),
        pytest.param(signal.SIGINT, 1, id="sigint-1-worker"),
    ],
)
def test_stop_mid_epoch_and_resume_equals_uninterrupted(uninterrupted, tmp_path, signum, workers):
    """Stopped after batch 1 of epoch 1 (3 epochs of 3 batches): the resumed run goes on with
    batch 2, its data, augmentation and drop path, and the running totals of the epoch's metrics,
    and ends as the run that never stopped (which loaded its data without workers)."""
    run_dir = tmp_path / "stopped"
    cfg = compose_config("train", [*FAST, *RUN, f"data.num_workers={workers}"], run_dir)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(SystemExit) as stopped:
        run_with(cfg, Interrupt(epoch=1, batch=1, signum=signum))
    assert stopped.value.code == (EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before  # handler given back
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 5  # 3 batches of epoch 0, 2 of epoch 1
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]

    assert_same_run(resume(run_dir), run_dir, uninterrupted)


@pytest.mark.slow  # 3 runs of 2 spawned processes: about 100 s here
def test_ddp_stop_mid_epoch_and_resume_equals_uninterrupted(tmp_path):
    """trainer=ddp_sim, stopped mid-epoch: rank 0's checkpoint holds the loader position (the
    same on every rank) and both ranks' metric totals; each rank resumes at its next batch."""
    ddp = ["trainer=ddp_sim", *(o for o in FAST if o != "trainer=cpu"), *RUN, "test=false"]
    straight_dir, run_dir = tmp_path / "straight", tmp_path / "stopped"
    expected = train(compose_config("train", ddp, straight_dir))
    with pytest.raises(ProcessExitedException) as stopped:
        run_with(compose_config("train", ddp, run_dir), Interrupt(epoch=1, batch=1))
    assert stopped.value.exit_code == EXIT_SIGINT
    assert_same_run(resume(run_dir), run_dir, (expected, straight_dir))


def test_resume_a_performer_run(train_config):
    """Checkpoints of modules with extra state (the Performer's redraw schedule) fit on resume."""
    cfg = train_config("model=performer", "rpe=exp", "trainer.max_epochs=1")
    run_dir = Path(cfg.paths.output_dir)
    first = train(cfg)
    more = train(compose_config("train", [f"resume_dir={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert first["epochs"] == 1 and more["epochs"] == 2
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    schedule = ckpt["state_dict"]["net.blocks.0.attn.kernel._extra_state"]
    assert schedule["steps"] == ckpt["global_step"] > 0, "the redraw schedule went on counting"


def test_resume_applies_overrides_and_refuses_group_switches(train_config, tmp_path):
    cfg = train_config("trainer.max_epochs=1")
    run_dir = Path(cfg.paths.output_dir)
    train(cfg)
    more = train(compose_config("train", [f"resume_dir={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert more["epochs"] == 2
    from vit_rpe.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="drop model=vit"):
        train(compose_config("train", [f"resume_dir={run_dir}", "model=vit"], run_dir))


# --- resuming with another trainer.max_epochs: the lr schedule is stretched, not restarted -----


def cosine(progress: float, min_lr_ratio: float) -> float:
    """The cosine's factor at ``progress`` (0 at the end of warmup, 1 at the end), by hand."""
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule(total_steps: int, saved: tuple | None = None):
    """SGD at lr 1 on one parameter, with warmup_cosine (1 epoch of 2 steps warmup, min 0.1),
    and the optimizer's and scheduler's saved states loaded, as Lightning restores them."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps, steps_per_epoch=2, warmup_epochs=1, min_lr_ratio=0.1)
    if saved:
        optimizer.load_state_dict(saved[0])
        scheduler.load_state_dict(saved[1])
    return scheduler


def run_steps(scheduler, steps: int) -> list[float]:
    """The lr of each of the next ``steps`` optimizer steps."""
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def saved(scheduler) -> tuple:
    return scheduler.optimizer.state_dict(), scheduler.state_dict()


def test_a_resumed_schedule_is_stretched_to_the_new_length():
    """Planned for 10 steps, stopped after 6 (halfway down the cosine) and resumed for 20: the
    cosine goes on from where it was, with its remaining half spread over the remaining 14 steps,
    so the lr does not jump at the resume and reaches the minimum at step 20."""
    first = schedule(10)
    warmup = [1 / 3, 2 / 3]  # (step + 1) / (warmup steps + 1)
    assert run_steps(first, 6) == pytest.approx(warmup + [cosine((s - 2) / 8, 0.1) for s in range(2, 6)])

    resumed = schedule(20, saved(first))
    halfway = (6 - 2) / 8
    stretched = [cosine(halfway + (1 - halfway) * (s - 6) / (20 - 6), 0.1) for s in range(6, 21)]
    assert stretched[0] == pytest.approx(cosine(halfway, 0.1))  # no jump: the lr step 6 had planned
    assert run_steps(resumed, 6) == pytest.approx(stretched[:6])

    # Resumed again with the same max_epochs, it keeps the stretched curve.
    again = schedule(20, saved(resumed))
    assert run_steps(again, 9) == pytest.approx(stretched[6:15]) == run_steps(resumed, 9)
    assert again.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # step 20: the minimum


def test_a_finished_schedule_resumed_for_longer_stays_at_the_minimum(caplog):
    """A run that ended (its lr at the minimum) and is trained on: the extra steps keep the
    minimum lr (no restart of the warmup and the cosine), and the log says so."""
    finished = schedule(10)
    run_steps(finished, 10)
    with caplog.at_level(logging.WARNING):
        resumed = schedule(16, saved(finished))
    assert run_steps(resumed, 6) == pytest.approx([0.1] * 6)
    assert "minimum" in caplog.text


def test_resume_with_more_epochs_continues_the_lr_schedule(tmp_path):
    """The whole run: 4 epochs of 3 steps planned (1 of warmup), killed at the start of epoch 2,
    resumed with trainer.max_epochs=6. The lr of every step in the CSV log, by hand."""
    run_dir = tmp_path / "run"
    cfg = compose_config(
        "train", [*FAST, "trainer.max_epochs=4", "model.scheduler.warmup_epochs=1", "test=false"], run_dir
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with(cfg, Crash(epoch=2))
    resume_cfg = compose_config(
        "train", [f"resume_dir={run_dir}", "trainer.max_epochs=6", "+callbacks.fault=null"], run_dir
    )
    train(resume_cfg)

    lr, min_ratio = cfg.model.optimizer.lr, cfg.model.scheduler.min_lr_ratio
    planned = [(s + 1) / 4 for s in range(3)] + [cosine((s - 3) / 9, min_ratio) for s in range(3, 6)]
    at_resume = (6 - 3) / 9
    stretched = [cosine(at_resume + (1 - at_resume) * (s - 6) / (18 - 6), min_ratio) for s in range(6, 18)]
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    logged = [float(row["train/lr"]) for row in rows if row.get("train/lr")]
    assert logged == pytest.approx([lr * f for f in planned + stretched], rel=1e-6)

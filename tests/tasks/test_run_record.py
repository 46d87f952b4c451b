"""The run record: each epoch's timing, its summary, a resumed epoch, and its trip through state
dicts and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vit_rpe.tasks.run_record import STATE_KEY, RunRecord, read_run_record


class Task(nn.Module):
    """A module holding a record where the classifier does (``run_record``)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.run_record = RunRecord()


class Clock:
    """A (wall, cpu) clock the test moves by hand."""

    def __init__(self):
        self.now = (100.0, 10.0)

    def advance(self, wall: float, cpu: float) -> None:
        self.now = (self.now[0] + wall, self.now[1] + cpu)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(RunRecord, "_now", staticmethod(lambda: clock.now))
    return clock


def train(record: RunRecord, clock: Clock, epoch: int, *batches: tuple[float, float, int], world_size=1):
    """Start ``epoch`` and run batches of (wall seconds, cpu seconds, images)."""
    record.start_epoch(epoch, world_size)
    for wall, cpu, images in batches:
        clock.advance(wall, cpu)
        record.update(images)


def test_each_epoch_and_the_summary(clock):
    record = RunRecord()
    # 2 processes of 50 + 50 images each: the job's images
    train(record, clock, 0, (1.0, 1.5, 50), (1.0, 1.5, 50), world_size=2)
    clock.advance(7.0, 7.0)  # validation between epochs is not counted
    train(record, clock, 1, (4.0, 5.0, 100), world_size=2)
    assert record.epochs == [
        {"epoch": 0.0, "seconds": 2.0, "cpu_seconds": 3.0, "images": 200.0},
        {"epoch": 1.0, "seconds": 4.0, "cpu_seconds": 5.0, "images": 200.0},
    ]
    assert record.last_epoch()["images_per_sec"] == 50.0
    assert record.summary() == {"epochs": 2, "seconds_per_epoch": 3.0, "train_images_per_sec": 75.0}


def test_an_epoch_without_a_batch_is_left_out_of_the_summary(clock):
    assert RunRecord().summary() == {"epochs": 0, "seconds_per_epoch": None, "train_images_per_sec": None}
    record = RunRecord()
    train(record, clock, 0, (2.0, 2.0, 10))
    train(record, clock, 1)  # started, stopped before its first batch
    assert record.summary() == {"epochs": 1, "seconds_per_epoch": 2.0, "train_images_per_sec": 5.0}


def test_a_resumed_epoch_adds_to_its_entry_without_the_restart(clock):
    task = Task()
    train(task.run_record, clock, 3, (2.0, 1.0, 10))
    state = task.state_dict()  # the checkpoint of a stop mid-epoch
    clock.advance(60.0, 5.0)  # the restart
    resumed = Task()
    resumed.load_state_dict(state)
    train(resumed.run_record, clock, 3, (3.0, 2.0, 20))
    assert resumed.run_record.epochs == [{"epoch": 3.0, "seconds": 5.0, "cpu_seconds": 3.0, "images": 30.0}]


def test_the_record_travels_in_the_state_dict(clock):
    task = Task()
    train(task.run_record, clock, 0, (2.0, 3.0, 100))
    state = task.state_dict()
    assert state[STATE_KEY] == {"epochs": task.run_record.epochs}
    other = Task()
    other.load_state_dict(state)  # strict
    assert other.run_record.epochs == task.run_record.epochs
    assert other.run_record.epochs is not task.run_record.epochs  # a copy


def test_a_state_dict_from_before_the_record_loads_with_an_empty_one(clock):
    state = {k: v for k, v in Task().state_dict().items() if k != STATE_KEY}
    task = Task()
    train(task.run_record, clock, 0, (2.0, 3.0, 100))
    task.load_state_dict(state)  # strict, and no "missing key"
    assert task.run_record.epochs == []


def test_read_from_a_checkpoint(clock, tmp_path):
    task = Task()
    train(task.run_record, clock, 0, (2.0, 3.0, 100))
    train(task.run_record, clock, 1, (4.0, 5.0, 100))
    torch.save({"state_dict": task.state_dict()}, tmp_path / "last.ckpt")
    assert [e["images_per_sec"] for e in read_run_record(tmp_path / "last.ckpt")] == [50.0, 25.0]
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}}, tmp_path / "old.ckpt")
    assert read_run_record(tmp_path / "old.ckpt") == []


def test_the_end_of_a_batch_moves_the_clock_and_adds_no_images(clock):
    record = RunRecord()
    train(record, clock, 0, (1.0, 1.0, 8))  # the training step: its images
    clock.advance(0.5, 0.5)  # the backward and the optimizer step
    record.update()
    assert record.epochs[-1] == {"epoch": 0.0, "seconds": 1.5, "cpu_seconds": 1.5, "images": 8.0}

"""The run's own record of its training epochs: wall seconds, CPU seconds and images of each.

It is the one clock of a run. The task logs each epoch's entry (``train/epoch_time``,
``train/images_per_sec``), train.py writes metrics.json's summary from the record, and
``python -m vit_rpe.bench epoch`` reads it from the run's checkpoint.

The record is a module with an extra state (torch's ``get_extra_state``), so it travels with the
weights: into every checkpoint (a resumed run's summary averages the epochs before the stop too)
and back from the worker processes of a spawned DDP run (trainer=ddp_sim), whose weights
Lightning loads into the main process's task. No statistics pass through ``callback_metrics``.
"""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

# The record's key in the task's state dict (the classifier holds it as ``run_record``).
STATE_KEY = "run_record._extra_state"


class RunRecord(nn.Module):
    """Timing of every training epoch, from its first batch to the end of its last (validation
    excluded). The task updates the running epoch's entry in every training step (its images)
    and at every batch's end (its time): a checkpoint written at a batch's end holds the batch,
    although callbacks' hooks run before the task's. An epoch resumed mid-way adds to its entry:
    its seconds are the two parts', the restart excluded."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict[str, float]] = []  # {"epoch", "seconds", "cpu_seconds", "images"}
        self._start = (0.0, 0.0)
        self._base: dict[str, float] = {}
        self._world_size = 1

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def start_epoch(self, epoch: int, world_size: int = 1) -> None:
        """Start (or, resumed, continue) the entry of ``epoch``. ``world_size`` processes each
        count their batches: images are the whole job's."""
        if not self.epochs or self.epochs[-1]["epoch"] != epoch:
            self.epochs.append({"epoch": float(epoch), "seconds": 0.0, "cpu_seconds": 0.0, "images": 0.0})
        self._base = dict(self.epochs[-1])
        self._start = self._now()
        self._world_size = world_size

    def update(self, images: int = 0) -> None:
        """Bring the running epoch's entry up to now, adding ``images`` (this process's)."""
        wall, cpu = self._now()
        entry = self.epochs[-1]
        entry["seconds"] = self._base["seconds"] + wall - self._start[0]
        entry["cpu_seconds"] = self._base["cpu_seconds"] + cpu - self._start[1]
        entry["images"] += images * self._world_size

    def last_epoch(self) -> dict[str, float]:
        """The running (or last) epoch's entry, with its images per second."""
        return with_rate(self.epochs[-1])

    def summary(self) -> dict[str, float | None]:
        """metrics.json's ``epochs``, ``seconds_per_epoch`` and ``train_images_per_sec``: means
        over the epochs that trained a batch."""
        trained = [with_rate(e) for e in self.epochs if e["images"] > 0]
        n = len(trained)
        return {
            "epochs": n,
            "seconds_per_epoch": sum(e["seconds"] for e in trained) / n if n else None,
            "train_images_per_sec": sum(e["images_per_sec"] for e in trained) / n if n else None,
        }

    def get_extra_state(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs]}

    def set_extra_state(self, state: dict) -> None:
        self.epochs = [dict(e) for e in state["epochs"]]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the record existed load with an empty one.
        state_dict.setdefault(prefix + "_extra_state", {"epochs": []})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def with_rate(entry: dict[str, float]) -> dict[str, float]:
    return {**entry, "images_per_sec": entry["images"] / max(entry["seconds"], 1e-9)}


def read_run_record(ckpt_path: str | Path) -> list[dict[str, float]]:
    """The epochs recorded in a task checkpoint (``[]`` for one written before the record)."""
    from vit_rpe.utils.checkpoint import read_checkpoint

    state = read_checkpoint(ckpt_path).get("state_dict", {})
    return [with_rate(e) for e in state.get(STATE_KEY, {"epochs": []})["epochs"]]

"""Every documented logger, callbacks and CPU-runnable trainer option trains after `make install`
and writes what it promises (trainer=ddp_sim: tests/test_ddp.py; gpu, mps, ddp need the hardware)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FAST, compose_config
from vit_rpe.train import train
from vit_rpe.utils.run import run_job


def tensorboard_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    return set(EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()["scalars"])


def wandb_runs(run_dir: Path) -> list[Path]:
    return list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def has_csv_log(run_dir: Path) -> bool:
    return "val/acc" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]


# option -> what its run directory must hold besides metrics.json
WRITES = {
    "logger=csv": lambda d: has_csv_log(d) and not (d / "tensorboard").exists(),
    "logger=tensorboard": lambda d: (
        {"val/acc", "train/loss"} <= tensorboard_tags(d) and not (d / "csv").exists()
    ),
    "logger=many": lambda d: has_csv_log(d) and "val/acc" in tensorboard_tags(d) and len(wandb_runs(d)) == 1,
    "logger=wandb": lambda d: has_csv_log(d) and len(wandb_runs(d)) == 1,
    "logger=none": lambda d: not any((d / name).exists() for name in ("csv", "tensorboard", "wandb")),
    "callbacks=default": lambda d: (
        (d / "checkpoints" / "last.ckpt").is_file() and any((d / "checkpoints").glob("epoch_*.ckpt"))
    ),
    "callbacks=early_stopping": lambda d: (d / "checkpoints" / "last.ckpt").is_file(),
    "callbacks=none": lambda d: not (d / "checkpoints").exists(),
    "trainer=cpu": lambda d: (d / "config.yaml").is_file(),
    "trainer=default": lambda d: (d / "config.yaml").is_file(),
    "trainer=auto": lambda d: (d / "config.yaml").is_file(),
}


@pytest.mark.parametrize("option", list(WRITES))
def test_option_trains_and_writes_its_files(option, tmp_path, monkeypatch):
    if option in ("logger=wandb", "logger=many"):
        import wandb

        # W&B keeps its settings in a process-wide singleton: start from a fresh one, offline (an
        # earlier test in this process may have left another mode or a fake key behind)
        wandb.teardown()
        monkeypatch.setenv("WANDB_MODE", "offline")
    group = option.split("=")[0]
    overrides = [o for o in FAST if not o.startswith(f"{group}=")]
    if group == "callbacks":  # FAST switches two of the default callbacks off
        overrides = [o for o in overrides if not o.startswith("callbacks.")]
    run_dir = tmp_path / "run"
    cfg = compose_config("train", [*overrides, option], run_dir)
    metrics = run_job(train, cfg)  # as the CLI runs it: a W&B run is finished at the end
    assert metrics["epochs"] == 1 and "test/acc" in metrics
    assert (run_dir / "metrics.json").is_file()
    assert WRITES[option](run_dir), (
        f"{option} did not write its files: {sorted(p.name for p in run_dir.iterdir())}"
    )

"""Run directories written by hand, as train(), eval() and Hydra leave them, for the report's tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def write_run(path: Path, metrics: dict | None, history: list[dict] | None = None, overrides=(), **config):
    """A run directory as train() and Hydra leave it."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if history:
        (path / "csv").mkdir()
        with (path / "csv" / "metrics.csv").open("w", newline="") as file:
            writer = csv.DictWriter(
                file, fieldnames=["epoch", "step", "val/acc", "train/epoch_time", "test/acc"]
            )
            writer.writeheader()
            writer.writerows(history)
    return path


def net(attention="softmax", rpe="none"):
    backbone = {"_target_": "vit_rpe.models.VisionTransformer", "attention": attention, "rpe": rpe}
    return {"model": {"net": backbone}, "data": {"_target_": "vit_rpe.data.MNISTDataModule"}}


def study_config(run_dir: Path, seed: int, lr: float = 1e-3, rpe: str = "none", **top) -> dict:
    """A resolved config.yaml as train() writes it: paths inside the run, seeds copied from ``seed``."""
    return {
        "task_name": "study",
        "tags": ["study"],
        "seed": seed,
        "ckpt_path": None,
        "resume_dir": None,
        "data": {"_target_": "vit_rpe.data.MNISTDataModule", "data_dir": "data/mnist", "seed": seed},
        "model": {
            "net": {"_target_": "vit_rpe.models.VisionTransformer", "attention": "softmax", "rpe": rpe},
            "optimizer": {"lr": lr},
        },
        "rpe": {"family": rpe},
        "trainer": {"default_root_dir": str(run_dir), "max_epochs": 3},
        "logger": {"csv": {"save_dir": str(run_dir)}},
        "callbacks": {"last_checkpoint": {"dirpath": f"{run_dir}/checkpoints"}, "step_seed": {"seed": seed}},
        "paths": {"root_dir": ".", "data_dir": "data", "log_dir": "outputs", "output_dir": str(run_dir)},
        **top,
    }


def write_study_run(path: Path, metrics: dict | None, seed: int, history=None, **config):
    overrides = [f"rpe={config.get('rpe', 'none')}", f"model.optimizer.lr={config.get('lr', 1e-3)}"]
    return write_run(
        path, metrics, history, [*overrides, f"seed={seed}"], **study_config(path, seed, **config)
    )


def write_eval_run(path: Path, ckpt_path: str, metrics: dict | None, root_dir: str = ".", seed: int = 42):
    """A ``python -m vit_rpe.eval ckpt_path=...`` run: the data, no model (the checkpoint has it)."""
    config = {
        "task_name": "eval",
        "seed": seed,
        "ckpt_path": ckpt_path,
        "data": {"_target_": "vit_rpe.data.DigitsDataModule", "num_workers": 0, "seed": seed},
        "trainer": {"default_root_dir": str(path)},
        "paths": {"root_dir": root_dir, "output_dir": str(path)},
    }
    overrides = [f"ckpt_path={ckpt_path}", "data=digits", "data.num_workers=0"]
    if metrics is not None:
        metrics = {**metrics, "ckpt_path": ckpt_path, "data": "vit_rpe.data.DigitsDataModule"}
    return write_run(path, metrics, None, overrides, **config)


PER_CLASS_COLUMNS = ("class", "support", "recall", "precision", "f1")


def write_per_class(run_dir: Path, recall: dict[str, float | None], support: int = 10) -> None:
    """``per_class.csv`` as the per-class callback writes it; None: a class without test images."""
    with (run_dir / "per_class.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(PER_CLASS_COLUMNS)
        for name, value in recall.items():
            if value is None:
                writer.writerow([name, 0, "", "", ""])
            else:
                writer.writerow([name, support, f"{value:.6f}", "0.5", "0.5"])


def write_resolution_evals(run_dir: Path, accuracy: dict[int, float]) -> None:
    """``<run>/evals/<px>px/``: the run's model tested at other image sizes, as eval writes it."""
    for size, acc in accuracy.items():
        folder = run_dir / "evals" / f"{size}px"
        folder.mkdir(parents=True)
        metrics = {"test/acc": acc, "test/loss": 1.0 - acc, "image_size": size, "ckpt_path": "x.ckpt"}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "config.yaml").write_text(yaml.safe_dump({"task_name": "eval", "ckpt_path": "x.ckpt"}))

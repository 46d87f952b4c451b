"""Run directories, found and read: what a run says about itself on disk.

A run is a directory with ``metrics.json``, ``error.txt`` or Hydra's ``.hydra/``: a training run
(``vit_rpe.train``), an evaluation of a checkpoint (``vit_rpe.eval``), a sweep job. Nothing here
compares runs; that is ``groups.py``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Folders inside a run that hold no other runs.
SKIP_DIRS = {".hydra", "csv", "tensorboard", "wandb", "checkpoints", "report", "__pycache__"}


@dataclass
class Run:
    """What a run directory says about itself: config, metrics, per-epoch history, failure."""

    dir: Path
    status: str  # completed | failed | incomplete
    config: dict[str, Any]
    choices: dict[str, Any]  # config group choices (model=..., rpe=...) of a CLI run
    overrides: list[str]
    metrics: dict[str, Any]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(epoch, value)]
    error: str | None = None


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None  # a job killed while writing: reported as incomplete


def read_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of every metric in a Lightning CSV log (the last value logged in an epoch)."""
    if not path.is_file():
        return {}
    per_metric: dict[str, dict[int, float]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            try:
                epoch = int(float(row.get("epoch") or ""))
            except ValueError:
                continue
            for key, text in row.items():
                if key in ("epoch", "step") or not text:
                    continue
                with contextlib.suppress(ValueError):
                    per_metric.setdefault(key, {})[epoch] = float(text)
    return {key: sorted(values.items()) for key, values in per_metric.items()}


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("metrics.json", "error.txt", ".hydra/config.yaml"))


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory at or below ``root``, in natural order (job 2 before job 10)."""
    found = []
    stack = [root]
    while stack:
        path = stack.pop()
        if is_run_dir(path):
            found.append(path)
        stack.extend(p for p in path.iterdir() if p.is_dir() and p.name not in SKIP_DIRS)
    return sorted(found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])


def load_run(run_dir: Path) -> Run:
    metrics = read_json(run_dir / "metrics.json")
    hydra = read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    # config.yaml is the resolved config train() writes; Hydra's copy exists even if the job failed early.
    config = read_yaml(run_dir / "config.yaml") or resolve_composed(
        read_yaml(run_dir / ".hydra" / "config.yaml") or {}, run_dir
    )
    error = None
    if (run_dir / "error.txt").is_file() or (metrics or {}).get("status") == "failed":
        status = "failed"
        error = (metrics or {}).get("error") or last_line(run_dir / "error.txt")
    else:
        status = "completed" if metrics else "incomplete"
    return Run(
        dir=run_dir,
        status=status,
        config=config,
        choices=dict(hydra.get("hydra", {}).get("runtime", {}).get("choices") or {}),
        overrides=list(read_yaml(run_dir / ".hydra" / "overrides.yaml") or []),
        metrics=metrics or {},
        history=read_history(run_dir / "csv" / "metrics.csv"),
        error=error,
    )


def resolve_composed(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Hydra's composed config resolved as train() would have, so it compares with resolved ones.

    The run directory stands in for ``${hydra:runtime.output_dir}``; what cannot be resolved here
    (an environment that is gone) keeps the composed values.
    """
    cfg = OmegaConf.create(config)
    if "paths" in cfg:
        cfg.paths.output_dir = str(run_dir)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return config


def last_line(path: Path) -> str | None:
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return lines[-1].strip() if lines else None


def short_class(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if target else None


def describe(run: Run) -> dict[str, Any]:
    """Model, attention, RPE and data names: the CLI's group choices, else read off the config."""
    net = (run.config.get("model") or {}).get("net") or {}
    data = run.config.get("data") or {}
    rpe = net.get("rpe") if isinstance(net.get("rpe"), str) else (run.config.get("rpe") or {}).get("family")
    data_class = short_class(data.get("_target_"))
    data_name = data_class.removesuffix("DataModule").lower() if data_class else None
    return {
        "model": run.choices.get("model") or short_class(net.get("_target_")),
        "attention": net.get("attention") if isinstance(net.get("attention"), str) else None,
        "rpe": rpe,
        "data": run.choices.get("data") or data_name,
    }


def relative(path: Path, root: Path) -> str:
    """A run's directory as the report names it: relative to the folder the report covers."""
    text = str(path.relative_to(root)) if path != root else path.name
    return text or "."

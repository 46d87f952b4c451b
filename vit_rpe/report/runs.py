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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Folders inside a run that hold no other runs (``evals/<px>px``: the run's model at other image
# sizes, read as part of the run).
SKIP_DIRS = {".hydra", "csv", "tensorboard", "wandb", "checkpoints", "report", "evals", "__pycache__"}


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
    per_class: dict[str, float] = field(default_factory=dict)  # class -> test recall (per_class.csv)
    resolutions: dict[int, dict[str, Any]] = field(default_factory=dict)  # test image size -> metrics
    checkpoint: str | None = None  # an evaluation's checkpoint, as it was given
    trained_by: Run | None = None  # the training run that wrote that checkpoint, when it is found


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


def read_per_class(path: Path) -> dict[str, float]:
    """Test recall (per-class accuracy) of each class with test images, from ``per_class.csv``
    (columns class, support, recall, precision, f1)."""
    if not path.is_file():
        return {}
    recall = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            with contextlib.suppress(TypeError, ValueError):
                if float(row["support"]) > 0:
                    recall[row["class"]] = float(row["recall"])
    return recall


def read_resolutions(folder: Path) -> dict[int, dict[str, Any]]:
    """The run's model tested at other image sizes: ``evals/<px>px/metrics.json`` by image size."""
    found = {}
    for path in sorted(folder.glob("*px/metrics.json")) if folder.is_dir() else []:
        metrics = read_json(path) or {}
        size = metrics.get("image_size") or path.parent.name.removesuffix("px")
        with contextlib.suppress(TypeError, ValueError):
            if metrics.get("test/acc") is not None:
                found[int(size[0] if isinstance(size, list) else size)] = metrics
    return dict(sorted(found.items()))


def load_run(run_dir: Path) -> Run:
    metrics = read_json(run_dir / "metrics.json")
    hydra = read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    # config.yaml is the resolved config train() writes; Hydra's copy exists even if the job failed early.
    config = read_yaml(run_dir / "config.yaml") or resolve_composed(
        read_yaml(run_dir / ".hydra" / "config.yaml") or {}, run_dir
    )
    error = None
    if (metrics or {}).get("status") == "failed" or (not metrics and (run_dir / "error.txt").is_file()):
        status = "failed"  # an error.txt beside finished metrics is of an attempt that was resumed
        error = (metrics or {}).get("error") or last_line(run_dir / "error.txt")
    else:
        status = "completed" if metrics else "incomplete"
    # vit_rpe.eval: a checkpoint tested; its config has no model (the checkpoint has it)
    tested = "model" not in config or config.get("task_name") == "eval"
    evaluation = tested and config.get("ckpt_path")
    if evaluation == "???":  # Hydra's missing value: the run stopped on it
        evaluation = "no ckpt_path"
    return Run(
        dir=run_dir,
        status=status,
        config=config,
        choices=dict(hydra.get("hydra", {}).get("runtime", {}).get("choices") or {}),
        overrides=list(read_yaml(run_dir / ".hydra" / "overrides.yaml") or []),
        metrics=metrics or {},
        history=read_history(run_dir / "csv" / "metrics.csv"),
        per_class=read_per_class(run_dir / "per_class.csv"),
        resolutions=read_resolutions(run_dir / "evals"),
        error=error,
        checkpoint=str(evaluation) if evaluation else None,
    )


def link_evaluations(runs: Sequence[Run]) -> None:
    """Give each evaluation the training run that wrote its checkpoint (``<run>/checkpoints/x.ckpt``):
    one of ``runs``, else read from disk (a relative path from the evaluation's root directory)."""
    for run in runs:
        if not run.checkpoint:
            continue
        ckpt = Path(run.checkpoint)
        folder = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        tail = [part for part in folder.parts if part != "."]
        if not tail:  # a checkpoint file outside any run directory
            continue
        found = [other for other in runs if other is not run and list(other.dir.parts[-len(tail) :]) == tail]
        if found:
            run.trained_by = found[0]
            continue
        root = Path((run.config.get("paths") or {}).get("root_dir") or ".")
        folder = folder if folder.is_absolute() else root / folder
        if folder.is_dir() and is_run_dir(folder):
            run.trained_by = load_run(folder)


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


def rpe_name(config: dict[str, Any]) -> str | None:
    """The RPE family a run's network used: ``model.net.rpe`` (conf/rpe/*.yaml write it), else the
    top-level ``rpe.family`` of a run made before the config tree (docs/configs.md, Key moves)."""
    net = (config.get("model") or {}).get("net") or {}
    if isinstance(net.get("rpe"), str):
        return net["rpe"]
    return (config.get("rpe") or {}).get("family")


def describe(run: Run) -> dict[str, Any]:
    """Model, attention, RPE and data names: the CLI's group choices, else read off the config.

    An evaluation's model is its training run's; its data is its own.
    """
    model_run = run.trained_by or run
    net = (model_run.config.get("model") or {}).get("net") or {}
    data = run.config.get("data") or {}
    data_class = short_class(data.get("_target_"))
    data_name = data_class.removesuffix("DataModule").lower() if data_class else None
    return {
        "model": model_run.choices.get("model") or short_class(net.get("_target_")),
        "attention": net.get("attention") if isinstance(net.get("attention"), str) else None,
        "rpe": rpe_name(model_run.config),
        "data": run.choices.get("data") or data_name,
    }


def relative(path: Path, root: Path) -> str:
    """A run's directory as the report names it: relative to the folder the report covers."""
    text = str(path.relative_to(root)) if path != root else path.name
    return text or "."

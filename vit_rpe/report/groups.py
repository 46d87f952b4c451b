"""Seed groups and their statistics: runs that differ only in their seed are one result.

A group's number is the mean, sample standard deviation (n - 1) and count over its completed runs.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vit_rpe.report.runs import Run

# Not part of what a run is: where it was written, what it was called, how it was started or resumed.
# Seeds (the key ``seed`` at any depth: data.seed and callbacks.step_seed.seed copy the top-level
# one) are what a seed group varies. Values inside the run's own directory are left out as well.
NOT_THE_EXPERIMENT = ("paths", "task_name", "tags", "resume_dir", "ckpt_path")
SEED_KEY = "seed"


def experiment_key(run: Run) -> str:
    """What a run is, as text: its config less seeds, names, locations and its own directory.

    Runs with the same key differ only in their seeds: one experiment measured several times.
    Evaluations (``vit_rpe.eval``) add the checkpoint they tested.
    """
    if not run.config:
        return f"unknown config: {run.dir}"  # nothing says what it was: it stands alone
    output_dir = str((run.config.get("paths") or {}).get("output_dir") or run.dir).rstrip("/")

    def inside_run(value: Any) -> bool:
        return isinstance(value, str) and (value == output_dir or value.startswith(output_dir + "/"))

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != SEED_KEY and not inside_run(v)}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    config = {k: v for k, v in run.config.items() if k not in NOT_THE_EXPERIMENT}
    if run.checkpoint:  # an evaluation is of one checkpoint: evaluations of two are two results
        config["evaluated"] = evaluated(run)
    return json.dumps(strip(config), sort_keys=True, default=str)


def evaluated(run: Run) -> str | None:
    """An evaluation's checkpoint: its file in its training run's directory, when that is known."""
    if not run.checkpoint:
        return None
    if run.trained_by is None:
        return run.checkpoint
    return str(run.trained_by.dir.resolve() / Path(run.checkpoint).name)


@dataclass
class Group:
    """Runs that differ only in their seed: one result, measured once per run."""

    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [run for run in self.runs if run.status == "completed"]


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Seed groups (see ``experiment_key``), in the order of their first runs."""
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(experiment_key(run), Group([])).runs.append(run)
    return list(groups.values())


class Stat(NamedTuple):
    mean: Any  # a lone value (or values all equal) as it is
    std: float | None  # sample standard deviation (n - 1 in the denominator); None for n < 2
    n: int


def stat(values: Iterable[Any]) -> Stat:
    found = [v for v in values if v is not None]
    if not found:
        return Stat(None, None, 0)
    mean = found[0] if all(v == found[0] for v in found) else statistics.fmean(found)
    return Stat(mean, statistics.stdev(found) if len(found) > 1 else None, len(found))


def epoch_stats(curves: Sequence[dict[int, float]]) -> dict[int, Stat]:
    """Per-epoch statistics of a group's curves, which may stop at different epochs."""
    epochs = sorted(set().union(*curves))
    return {epoch: stat(curve[epoch] for curve in curves if epoch in curve) for epoch in epochs}


def worst_classes(runs: Sequence[Run], count: int = 3) -> list[tuple[str, Stat]]:
    """The ``count`` classes with the lowest mean test recall over ``runs`` (ties by name)."""
    classes = sorted({name for run in runs for name in run.per_class})
    recall = {name: stat(run.per_class.get(name) for run in runs) for name in classes}
    return sorted(recall.items(), key=lambda item: (item[1].mean, item[0]))[:count]


def resolution_stats(runs: Sequence[Run], metric: str = "test/acc") -> dict[int, Stat]:
    """``metric`` at each test image size (``evals/<px>px``) over ``runs``."""
    sizes = sorted({size for run in runs for size in run.resolutions})
    return {size: stat((run.resolutions.get(size) or {}).get(metric) for run in runs) for size in sizes}

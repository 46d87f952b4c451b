"""What every entry point does around its job: show the config, build named parts, report."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.table
import rich.tree
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vit_rpe.utils.errors import UserError

log = logging.getLogger("vit_rpe")


def print_config_tree(cfg: DictConfig, order: tuple[str, ...] = ("data", "model", "rpe", "trainer")) -> None:
    """The resolved config as a tree, main groups first."""
    tree = rich.tree.Tree("config", style="bold")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(f"[bold]{key}[/bold]").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def instantiate_named(group: DictConfig | None) -> list[Any]:
    """Build every ``_target_`` entry of a group of named parts (callbacks, loggers); skip nulls."""
    if not group:
        return []
    return [instantiate(part) for part in group.values() if isinstance(part, DictConfig) and "_target_" in part]


def to_float(value: Any) -> float | int | None:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (int, float)):
        return value
    return None


def write_metrics(metrics: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def print_metrics(metrics: Mapping[str, Any], title: str = "results") -> None:
    table = rich.table.Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        value = metrics[key]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    rich.print(table)


def metric_for_sweeper(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value a Hydra sweeper optimises; a clear error when the name is not a metric."""
    if not name:
        return None
    if name not in metrics:
        raise UserError(
            f"optimized_metric={name!r} is not among the metrics ({', '.join(sorted(metrics))}): "
            "set optimized_metric to one of them"
        )
    value = float(metrics[name])
    return value if math.isfinite(value) else float("nan")


def user_error_of(err: BaseException) -> UserError | None:
    """The UserError behind an exception, also when Hydra's instantiate wrapped it."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        if isinstance(err, InstantiationException) and err.__cause__ is None:
            return None
        err = err.__cause__
    return None


def exit_on_user_error(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``job``; a mistake the user can fix ends the process with its message, no traceback."""
    try:
        return job(cfg)
    except Exception as err:
        user_error = user_error_of(err)
        if user_error is None:
            raise
        log.error("%s", user_error)
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(1) from None

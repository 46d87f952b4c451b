"""What every entry point does around its job: show the config, build named parts, report."""

from __future__ import annotations

import json
import logging
import math
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.table
import rich.tree
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vit_rpe.utils.errors import UserError

log = logging.getLogger("vit_rpe")

# The config tree, as an absolute path (Hydra reads a relative config_path against the module that
# *imports* the main, which breaks ``python -m vit_rpe``): vit_rpe/conf in an installed wheel,
# else conf/ at the repository root (a checkout, or an editable install of one).
_WHEEL_CONF = Path(__file__).resolve().parents[1] / "conf"
CONF_DIR = str(_WHEEL_CONF if _WHEEL_CONF.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def print_config_tree(cfg: DictConfig, order: tuple[str, ...] = ("data", "model", "trainer")) -> None:
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
    parts = [part for part in group.values() if isinstance(part, DictConfig) and "_target_" in part]
    return [instantiate(part) for part in parts]


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
        print(f"error: {user_error}", file=sys.stderr)  # once: the log's console handler is stdout
        raise SystemExit(1) from None


def in_multirun() -> bool:
    """True inside a job of a Hydra sweep (``-m``), where one failure must not end the others."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def save_hydra_files(task_cfg: DictConfig, output_dir: Path) -> None:
    """Hydra's record of the job in ``<output_dir>/.hydra`` (config, hydra and overrides.yaml), as
    Hydra writes it at job start. train.yaml sets ``hydra.output_subdir`` to null and train() calls
    this once the run is accepted, so that a refused command writes nothing into a run directory."""
    if not HydraConfig.initialized():
        return
    folder = output_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.instance().cfg
    parts = {"config": task_cfg, "hydra": hydra_cfg, "overrides": hydra_cfg.hydra.overrides.task}
    for name, part in parts.items():
        (folder / f"{name}.yaml").write_text(OmegaConf.to_yaml(part), encoding="utf-8")


def write_error(err: BaseException, output_dir: Path, cfg: DictConfig | None = None) -> str:
    """The job's traceback in ``error.txt``, which marks the run failed for the report, and Hydra's
    record of the job (which names its overrides) if the run had not written it; returns the
    one-line summary."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg is not None and not (output_dir / ".hydra").is_dir():
        save_hydra_files(cfg, output_dir)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    cause = user_error_of(err) or err
    message = str(cause).strip().splitlines()
    summary = f"{type(cause).__name__}: {message[0] if message else ''}"
    (output_dir / "error.txt").write_text(f"{text}\n{summary}\n")
    return summary


def record_failure(err: BaseException, output_dir: Path, cfg: DictConfig | None = None) -> str:
    """A sweep job's failure: ``error.txt`` and ``metrics.json`` with status failed; returns the
    one-line summary."""
    summary = write_error(err, output_dir, cfg)
    record = {"status": "failed", "error": summary, "output_dir": str(output_dir)}
    write_metrics(record, output_dir / "metrics.json")
    return summary


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the active W&B run, if any; print how to upload it when it ran offline."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    offline = bool(getattr(run.settings, "_offline", False))
    run_dir = Path(run.dir).parent  # <save_dir>/wandb/offline-run-<time>-<id>
    run.finish(exit_code=exit_code)
    if offline:
        log.info("W&B run saved offline; upload it with: wandb sync %s", run_dir)


def run_job(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``job`` as an entry point does; a W&B run never outlives its job.

    A single run stops on errors (a user error exits 1 cleanly) and leaves ``error.txt`` in its
    directory. A sweep job (``-m``) records its failure in its own directory and returns None, so
    the other jobs of the sweep still run.
    """
    multirun = in_multirun()
    try:
        result = job(cfg) if multirun else exit_on_user_error(leaving_error_file(job), cfg)
    except Exception as err:
        finish_wandb(exit_code=1)
        if not multirun:
            raise
        output_dir = Path(HydraConfig.get().runtime.output_dir)
        summary = record_failure(err, output_dir, cfg)
        log.error("job failed, the sweep goes on: %s (traceback in %s)", summary, output_dir / "error.txt")
        return None
    finish_wandb()
    return result


def run_directory(cfg: DictConfig) -> Path | None:
    """The job's run directory: ``paths.output_dir`` (Hydra's job directory on the command line; a
    test's or a script's own folder otherwise), or None where it cannot be resolved."""
    try:
        output_dir = OmegaConf.select(cfg, "paths.output_dir")
    except Exception:  # an interpolation that cannot resolve here, e.g. ${hydra:...} outside Hydra
        return None
    return Path(output_dir) if output_dir else None


def leaving_error_file(job: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """``job`` that writes ``error.txt`` into its run directory when it fails, so the report says
    failed; a resume (``resume_dir=``) never writes into the run it names, refused or not."""

    def run(cfg: DictConfig) -> Any:
        try:
            return job(cfg)
        except Exception as err:
            output_dir = run_directory(cfg)
            if output_dir is not None and not cfg.get("resume_dir"):
                write_error(err, output_dir, cfg)
            raise

    return run

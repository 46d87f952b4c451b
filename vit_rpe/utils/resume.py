"""``resume_dir=<run dir>``: continue a run in its own directory with its saved config.

The saved ``config.yaml`` says what the run was; this command's ``key=value`` overrides change it
(``trainer.max_epochs=20`` trains on); switching a config group is refused before anything is written,
and a run that already finished is left as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vit_rpe.utils.errors import CheckpointError, ConfigError


def resume_config(cfg: DictConfig) -> DictConfig:
    """``resume_dir=<run dir>``: the run's saved config, with this command's key=value overrides.

    The saved ``config.yaml`` says what the run was (model, data, trainer, seed); overrides given
    with ``resume_dir`` change it (``trainer.max_epochs=20`` trains on). Config groups
    (``model=...``) cannot be switched on a run that already has weights of one model.
    """
    resume_dir = cfg.get("resume_dir")
    if not resume_dir:
        return cfg
    run_dir = Path(resume_dir)
    saved_path = run_dir / "config.yaml"
    last = run_dir / "checkpoints" / "last.ckpt"
    if not run_dir.is_dir():
        raise CheckpointError(f"resume_dir={resume_dir} is not a directory: give the run directory to resume")
    if not saved_path.is_file():
        raise CheckpointError(f"resume_dir={resume_dir} has no config.yaml: not a training run directory")
    if not last.is_file() and not cfg.get("ckpt_path"):
        raise CheckpointError(
            f"{last} does not exist: the run saved no checkpoint to resume from (it stopped before its "
            "first epoch ended, or ran with callbacks.model_checkpoint=null); start a new run"
        )
    text = saved_path.read_text()
    saved = OmegaConf.create(text)
    old_dir = str(saved.paths.output_dir)
    if Path(old_dir).resolve() != run_dir.resolve():  # the run directory was moved or copied
        saved = OmegaConf.create(text.replace(old_dir, str(run_dir)))
    apply_overrides(saved, task_overrides(), saved_path)
    saved.paths.output_dir = str(run_dir)
    saved.resume_dir = str(run_dir)
    saved.ckpt_path = cfg.get("ckpt_path") or "last"
    return saved


def task_overrides() -> list[str]:
    """This command line's overrides (not hydra.*), when Hydra composed the config."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def apply_overrides(saved: DictConfig, overrides: Iterable[str], saved_path: Path) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key in ("resume_dir", "ckpt_path") or key.startswith("hydra."):
            continue
        value = override.value()
        if "." not in key and isinstance(value, str) and isinstance(saved.get(key), DictConfig):
            groups.append(override.input_line)
            continue
        if override.is_delete():
            OmegaConf.update(saved, key, None, force_add=True)
            continue
        OmegaConf.update(saved, key, value, merge=False, force_add=True)
    if groups:
        raise ConfigError(
            f"resume_dir continues the run with its saved config ({saved_path}); config groups cannot be "
            f"switched when resuming: drop {' '.join(groups)} (key=value overrides such as "
            "trainer.max_epochs=20 are applied), or start a new run"
        )


def finished_metrics(cfg: DictConfig) -> dict[str, Any] | None:
    """The saved metrics of a resumed run with nothing left to do, else None.

    A run is finished when its ``metrics.json`` holds its results (not a failure record) and its
    ``last.ckpt`` is no later than them (a run resumed to train further and stopped again is not),
    whether it ran all its epochs or stopped early. It has nothing left to do unless this command
    raises ``trainer.max_epochs`` above the run's.
    """
    if not cfg.get("resume_dir"):
        return None
    run_dir = Path(cfg.resume_dir)
    metrics = read_json(run_dir / "metrics.json")
    if not metrics or metrics.get("status") == "failed" or "epochs" not in metrics:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and checkpoint_epoch(last) >= int(metrics["epochs"]):
        return None
    saved = OmegaConf.create((run_dir / "config.yaml").read_text())
    planned, requested = epoch_limit(saved), epoch_limit(cfg)
    return metrics if requested <= planned else None


def epoch_limit(cfg: DictConfig) -> float:
    """trainer.max_epochs, where None or -1 (Lightning's "no limit") is infinite."""
    value = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    return math.inf if value is None or int(value) < 0 else int(value)


def checkpoint_epoch(path: Path) -> int:
    """The epoch a Lightning checkpoint was saved in (memory-mapped: the weights are not read)."""
    import torch  # here: the config checks before it stay fast

    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch", 0))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def nothing_to_do_message(metrics: dict[str, Any], cfg: DictConfig) -> str:
    epochs = int(metrics["epochs"])
    return (
        f"this run already finished (metrics.json, {epochs} epoch{'s' if epochs != 1 else ''}): nothing to "
        "do; to train "
        f"further, resume with a larger trainer.max_epochs (this run's is {cfg.trainer.max_epochs})"
    )

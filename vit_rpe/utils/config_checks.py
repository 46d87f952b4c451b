"""Config values checked at the boundary, before anything heavy is imported or written.

A wrong value here would otherwise end deep inside Lightning, torch or a datamodule in a
traceback that names neither the key nor the fix (``trainer.max_epochs=-1`` as an OverflowError
of the lr schedule, ``data.batch_size=ten`` as a TypeError). Each check names the key, the value
and what to write instead; the entry points call ``check_config`` first. Only plain values are
checked here: what needs the data or the model (a patch size that does not divide the image, a
folder without images) is checked where that is known.
"""

from __future__ import annotations

import numbers
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback  # not a Lightning callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_rpe.utils.errors import ConfigError

#: ``data.num_workers: auto``: the CPUs this process may use (0 for data already in memory)
AUTO = "auto"


def check_config(cfg: DictConfig) -> None:
    """Raise a ConfigError naming the first wrong value of a train or eval config."""
    training = bool(select(cfg, "train", True)) and "model" in cfg
    if training:
        check_max_epochs(select(cfg, "trainer.max_epochs"))
        lr = select(cfg, "model.optimizer.lr")
        if lr is not None:
            check_number("model.optimizer.lr", lr, "a positive learning rate, e.g. model.optimizer.lr=1e-3")
            if lr <= 0:
                raise ConfigError(
                    f"model.optimizer.lr={lr} must be positive, e.g. model.optimizer.lr=1e-3 (or drop the "
                    "override: each dataset's recipe sets one)"
                )
    check_positive_int("data.batch_size", select(cfg, "data.batch_size"), example=32)
    workers = select(cfg, "data.num_workers")
    if workers is not None and workers != AUTO:
        check_int("data.num_workers", workers, "a number of loader processes or auto")
        if workers < 0:
            raise ConfigError(
                f"data.num_workers={workers} must be 0 (load in the training process), a number of loader "
                "processes, or auto (the CPUs this process may use)"
            )
    size = select(cfg, "data.image_size")
    for side in size if isinstance(size, (ListConfig, list, tuple)) else [size]:  # (height, width)
        check_positive_int(
            "data.image_size", side, example=64, what="the side in pixels images are resized to"
        )
    check_rpe(cfg)


def check_moved_overrides(overrides: list[str]) -> None:
    """Command-line overrides of the top-level ``rpe.<key>`` node, which conf/rpe/*.yaml no longer
    write (docs/configs.md): Hydra would say only "Key 'rpe' is not in struct", so this names the
    key's new place, ``model.net.rpe_kwargs.<key>``, before Hydra composes."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if not key.startswith("rpe."):
            continue
        moved = "model.net.rpe_kwargs." + key.removeprefix("rpe.")
        if key == "rpe.family":
            fix = f"rpe={value or '<family>'}"
        else:
            fix = f"{moved}={value or '<value>'}" + (
                " (or rpe=rope_mixed)" if override == "rpe.variant=mixed" else ""
            )
        raise ConfigError(f"{override}: the rpe options moved under model.net (docs/configs.md): write {fix}")


class CheckConfig(HydraCallback):
    """Hydra callback (conf/hydra/default.yaml): a single run's config is checked before Hydra
    makes its run directory, so a wrong value leaves nothing behind. (Sweep jobs are checked in
    ``train``, where a failure is recorded in the job's directory and the sweep goes on.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vit_rpe.utils.run import exit_on_user_error

        exit_on_user_error(check_config, config)


def select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """The value at a dotted key, resolved; ``default`` when absent or ``???``."""
    return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_number(key: str, value: Any, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{key}={value!r} is not a number: give {fix}")


def check_int(key: str, value: Any, fix: str) -> None:
    if not is_int(value):
        raise ConfigError(f"{key}={value!r} is not a whole number: give {fix}")


def check_positive_int(key: str, value: Any, example: int, what: str | None = None) -> None:
    if value is None:
        return
    fix = f"{what or 'a whole number'}, at least 1, e.g. {key}={example}"
    check_int(key, value, fix)
    if value < 1:
        raise ConfigError(f"{key} must be at least 1, got {value}: give {fix}")


def check_max_epochs(value: Any) -> None:
    """A positive number of epochs: the lr schedule (warmup, then cosine) is laid out over them."""
    key = "trainer.max_epochs"
    if value is None:
        return
    check_int(key, value, "the number of epochs to train, e.g. trainer.max_epochs=10")
    if value == -1:
        raise ConfigError(
            "trainer.max_epochs=-1 (Lightning's 'no limit') is not supported: the learning-rate schedule "
            "(warmup, then cosine decay) is laid out over trainer.max_epochs. Give the number of epochs, "
            "e.g. trainer.max_epochs=100 (callbacks=early_stopping stops earlier when validation stalls)"
        )
    if value < 1:
        raise ConfigError(
            f"trainer.max_epochs={value} trains nothing: give at least 1 epoch, e.g. trainer.max_epochs=10; "
            "to only test a checkpoint, use python -m vit_rpe.eval ckpt_path=<file.ckpt>"
        )


def check_rpe(cfg: DictConfig) -> None:
    """``model.net.rpe_kwargs.impl`` chooses how a mask is applied: without a mask it would be
    silently ignored, so it is refused. (A run saved before the config tree kept these under a
    top-level ``rpe``: its resumed config is read the same way.)"""
    net = select(cfg, "model.net")
    if isinstance(net, DictConfig) and "rpe" in net:
        family, impl = select(cfg, "model.net.rpe"), select(cfg, "model.net.rpe_kwargs.impl")
    else:
        family, impl = select(cfg, "rpe.family"), select(cfg, "rpe.impl")
    if family in (None, "none") and impl not in (None, AUTO):
        raise ConfigError(
            f"model.net.rpe_kwargs.impl={impl} chooses how a relative position mask is applied, and rpe=none "
            "has no mask: choose a mask (rpe=general, rpe=exp or rpe=poly) or drop the "
            "model.net.rpe_kwargs.impl override"
        )

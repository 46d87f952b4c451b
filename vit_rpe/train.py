"""Train and test a classifier: ``python -m vit_rpe.train [overrides]``.

``train(cfg)`` is the whole job as a plain function (tests and sweepers call it); the Hydra
main around it only composes the config and returns the metric a sweeper optimises.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_rpe.utils.config_checks import check_config, check_moved_overrides
from vit_rpe.utils.errors import CheckpointError
from vit_rpe.utils.run import (
    CONF_DIR,
    exit_on_user_error,
    in_multirun,
    instantiate_named,
    metric_for_sweeper,
    print_config_tree,
    print_metrics,
    run_job,
    save_hydra_files,
    to_float,
    write_metrics,
)

if TYPE_CHECKING:  # lightning and torch are imported when a run starts, after the config checks
    import lightning as L

    from vit_rpe.data import ImageDataModule

log = logging.getLogger("vit_rpe.train")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` means this run directory's last checkpoint; any other value must be a file."""
    if not ckpt_path:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if path.is_dir():
        raise CheckpointError(f"ckpt_path={path} is a directory: give a .ckpt file, or use resume_dir=")
    if not path.is_file():
        hint = "resume a run with resume_dir=<its run directory>" if ckpt_path == "last" else ""
        raise CheckpointError(f"checkpoint {path} does not exist; {hint or 'check ckpt_path'}")
    return str(path)


def train(cfg: DictConfig, show_config: bool = False) -> dict[str, Any]:
    """Seed, build data, model, callbacks, loggers and trainer; fit; test the best checkpoint.

    ``show_config`` prints the config tree once the config, data and model passed their checks
    (so a mistake is the only output), before training starts.

    Returns the metrics also written to ``<output_dir>/metrics.json``.
    """
    check_config(cfg)
    from vit_rpe.utils.resume import finished_metrics, nothing_to_do_message, resume_config

    composed = copy.deepcopy(cfg)  # Hydra's record of the job, written once the run is accepted
    cfg = resume_config(cfg)  # resume_dir=<run dir>: that run's saved config, continued
    if (finished := finished_metrics(cfg)) is not None:  # and leave every file of it as it is
        print(nothing_to_do_message(finished, cfg))
        return finished
    from lightning.pytorch.utilities import rank_zero_only

    from vit_rpe.build import build_run
    from vit_rpe.callbacks.last_checkpoint import exit_status_on_sigterm
    from vit_rpe.utils.checkpoint import check_fits, read_task_checkpoint, uncompiled
    from vit_rpe.utils.cost import cost_per_image
    from vit_rpe.utils.csv_log import continue_csv_logs
    from vit_rpe.utils.trainer import instantiate_trainer

    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir) if cfg.get("train", True) else None
    resumed = read_task_checkpoint(ckpt_path) if ckpt_path else None
    datamodule, model = build_run(cfg, resuming=resumed)
    if resumed is not None:  # fail before training on a checkpoint of another model
        check_fits(model, resumed, ckpt_path)
    callbacks = instantiate_named(cfg.get("callbacks"))
    loggers = instantiate_named(cfg.get("logger"))
    trainer: L.Trainer = instantiate_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if show_config:
        print_config_tree(cfg)

    # Every check passed: from here on the run directory is written.
    output_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # torchrun/SLURM start every rank with this command line
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        if not cfg.get("resume_dir"):  # a resumed run keeps the record of how it was started
            save_hydra_files(composed, output_dir)
    if resumed is not None:  # keep the CSV log going
        continue_csv_logs(loggers, int(resumed.get("global_step", 0)))
        del resumed  # Lightning reads it again, with the optimizer and loop states
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if cfg.get("train", True):
        with exit_status_on_sigterm():
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_metrics = {k: to_float(v) for k, v in trainer.callback_metrics.items()}
    summary = run_summary(model, trainer, output_dir)  # before the test loads the best weights

    test_metrics: dict[str, Any] = {}
    if cfg.get("test", True):
        if trainer.world_size > 1 and trainer.is_global_zero:  # ddp_spawn: test runs in new processes
            continue_csv_logs(loggers, float("inf"))
        best = best_checkpoint(trainer)
        if not best:
            log.warning("no best checkpoint: testing the weights the model has now")
        with exit_status_on_sigterm():
            results = trainer.test(model, datamodule=datamodule, ckpt_path=best)
        test_metrics = {k: to_float(v) for k, v in (results[0] if results else {}).items()}

    exported = None
    if cfg.get("train", True) and trainer.is_global_zero:
        exported = export_backbone(model, datamodule, output_dir / "hf_model", best_checkpoint(trainer))

    metrics = {**fit_metrics, **test_metrics, **summary}
    metrics["export_dir"] = str(exported) if exported else None
    if trainer.is_global_zero:  # the cost of one image, on the run's device (utils/cost.py)
        net = uncompiled(model.net).to(trainer.strategy.root_device)
        metrics.update(
            cost_per_image(net, datamodule.data_config["input_size"], batch_size=datamodule.eval_batch_size)
        )
    metrics = {k: v for k, v in metrics.items() if v is not None}
    if trainer.is_global_zero:
        write_metrics(metrics, output_dir / "metrics.json")
        print_metrics(metrics, title=f"results: {output_dir}")
        log.info("run directory: %s", output_dir)
    sizes = cfg.get("eval_image_sizes") or []
    if sizes and cfg.get("test", True):
        evaluate_at_sizes(cfg, best_checkpoint(trainer), sizes, output_dir / "evals")
    return metrics


def evaluate_at_sizes(cfg: DictConfig, ckpt_path: str | None, sizes, folder: Path) -> dict[int, dict]:
    """``eval_image_sizes``: the tested checkpoint evaluated at each image size (as ``python -m
    vit_rpe.eval ckpt_path=... data.image_size=<px>`` does), into ``<folder>/<px>px/metrics.json``."""
    from vit_rpe.eval import evaluate

    if not ckpt_path:
        log.warning("eval_image_sizes: the run saved no checkpoint to evaluate")
        return {}
    results = {}
    for size in sizes:
        eval_cfg = copy.deepcopy(cfg)
        with open_dict(eval_cfg):
            eval_cfg.ckpt_path = ckpt_path
            eval_cfg.data.image_size = int(size)
            eval_cfg.paths.output_dir = str(folder / f"{int(size)}px")
            # the run's config is resolved: every path in it names the run directory, which the
            # evaluation at another size must leave as it is (its per_class.csv, its plots)
            eval_cfg.trainer.default_root_dir = eval_cfg.paths.output_dir
            eval_cfg.logger = None
        results[int(size)] = evaluate(eval_cfg)
    return results


def export_backbone(
    model: L.LightningModule, datamodule: ImageDataModule, folder: Path, best_ckpt: str | None
) -> Path | None:
    """A pretrained backbone exports itself (``save_pretrained``, its library's format) with the
    best checkpoint's weights and the preprocessing training used; None for other backbones."""
    from vit_rpe.models.backbone import PretrainedBackbone
    from vit_rpe.utils.checkpoint import load_weights, read_task_checkpoint, uncompiled

    net = uncompiled(model.net)
    if not isinstance(net, PretrainedBackbone):
        return None
    if best_ckpt:
        load_weights(model, read_task_checkpoint(best_ckpt)["state_dict"], source=best_ckpt)
    net.save_pretrained(folder, datamodule.data_config)
    log.info("fine-tuned model exported to %s", folder)
    return folder


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """The best checkpoint the run saved, or None (no checkpoint callback, or nothing saved)."""
    callback = trainer.checkpoint_callback
    return (callback.best_model_path if callback else "") or None


def run_summary(model: L.LightningModule, trainer: L.Trainer, output_dir: Path) -> dict[str, Any]:
    """Size and speed of the run: parameters, epochs, seconds per epoch, images per second.

    Epochs and speed come from the task's run record (tasks/run_record.py), which holds every
    epoch of the run, those before a resume and those trained in spawned DDP workers included.
    """
    import torch

    record = model.run_record.summary()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **record,
        "best_ckpt": best_checkpoint(trainer),
        "output_dir": str(output_dir),
        "device": str(model.device.type if hasattr(model, "device") else torch.device("cpu")),
    }


def train_and_score(cfg: DictConfig) -> float | None:
    """train(cfg), then the metric a sweeper optimises: an unknown name is a user error of the job."""
    return metric_for_sweeper(train(cfg, show_config=True), cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    score = run_job(train_and_score, cfg)
    if (
        score is None and in_multirun()
    ):  # a failed sweep job, recorded in its directory: NaN tells the sweeper
        return float("nan")
    return score


def main() -> None:
    """The command line: overrides of keys that moved are named before Hydra composes."""
    exit_on_user_error(check_moved_overrides, sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()

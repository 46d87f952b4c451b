"""Test a saved checkpoint: ``python -m vit_rpe.eval ckpt_path=<file.ckpt> [data=...]``.

The checkpoint carries its backbone config (the task stores it in its hyperparameters), so only
the data is configured here. The checkpoint is checked before anything runs: it exists, it is a
Lightning checkpoint of ``ImageClassifier``, and its classes, channels and image size match the
data. Results go to ``<run dir>/metrics.json`` and a table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from vit_rpe.data import fill_data_metadata
from vit_rpe.tasks import ImageClassifier
from vit_rpe.utils.checkpoint import read_task_checkpoint
from vit_rpe.utils.errors import CheckpointError, ConfigError
from vit_rpe.utils.run import (
    CONF_DIR,
    exit_on_user_error,
    instantiate_named,
    print_metrics,
    to_float,
    write_metrics,
)
from vit_rpe.utils.trainer import instantiate_trainer

log = logging.getLogger("vit_rpe.eval")


def check_matches_data(hparams: dict[str, Any], datamodule: Any, path: str) -> None:
    """The model was trained on data of this shape: classes, channels, image size."""
    net = hparams["net"]
    expected = {
        "num_classes": hparams.get("num_classes", net.get("num_classes")),
        "in_chans": net.get("in_chans"),
        "image_size": net.get("img_size"),
    }
    for key, trained in expected.items():
        given = getattr(datamodule, key, None)
        if trained is None or given is None:
            continue
        trained_size = trained[0] if isinstance(trained, (list, tuple)) else trained
        if int(trained_size) != int(given):
            raise CheckpointError(
                f"checkpoint {path} was trained with {key}={trained} but the data has {key}={given}: "
                f"evaluate on the data it was trained on (data=...), or set data.{key}={trained} if the data "
                "allows it"
            )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load the checkpoint, check it against the data, run the test split, write metrics.json."""
    try:
        path = str(cfg.ckpt_path)
    except MissingMandatoryValue:
        raise ConfigError("ckpt_path is required: python -m vit_rpe.eval ckpt_path=<file.ckpt>") from None
    ckpt = read_task_checkpoint(path)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    fill_data_metadata(cfg, datamodule)
    OmegaConf.resolve(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    check_matches_data(ckpt["hyper_parameters"], datamodule, path)
    del ckpt
    L.seed_everything(cfg.seed)

    model = ImageClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    loggers = instantiate_named(cfg.get("logger"))
    trainer: L.Trainer = instantiate_trainer(cfg.trainer, logger=loggers or False)
    results = trainer.test(model, datamodule=datamodule)
    metrics = {k: to_float(v) for k, v in (results[0] if results else {}).items()}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    metrics.update(ckpt_path=path, data=str(cfg.data._target_), output_dir=str(output_dir))
    if trainer.is_global_zero:
        write_metrics(metrics, output_dir / "metrics.json")
        print_metrics(metrics, title=f"test of {path}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(evaluate, cfg)


if __name__ == "__main__":
    main()

"""Test a saved checkpoint: ``python -m vit_rpe.eval ckpt_path=<file.ckpt> [data=...]``.

The checkpoint carries its model config (the task stores it in its hyperparameters, with what
rebuilds a pretrained backbone without its hub or folder), so only the data is configured here.
The run is built as training builds it (``vit_rpe.build.build_run``): the checkpoint is checked
first (it exists, it is a Lightning checkpoint of ``ImageClassifier``, its classes, channels and
image size match the data), and a pretrained backbone's input size and normalisation apply.
Without ``data=`` the data is the checkpoint's own (the datamodule's recorded arguments);
``data.image_size=<px>`` tests a from-scratch ViT at another input size (``set_grid_size``,
docs/resolution.md). Results go to ``<run dir>/metrics.json`` (with the image size and the cost
per image: utils/cost.py) and a table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from vit_rpe.utils.config_checks import check_config
from vit_rpe.utils.errors import ConfigError
from vit_rpe.utils.run import (
    CONF_DIR,
    instantiate_named,
    print_metrics,
    run_job,
    to_float,
    write_metrics,
)

log = logging.getLogger("vit_rpe.eval")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Build the checkpoint's model and the data, run the test split, write metrics.json."""
    try:
        path = str(cfg.ckpt_path)
    except MissingMandatoryValue:
        raise ConfigError("ckpt_path is required: python -m vit_rpe.eval ckpt_path=<file.ckpt>") from None
    check_config(cfg)
    from vit_rpe.build import build_run  # lightning and torch: after the config checks
    from vit_rpe.utils.checkpoint import uncompiled
    from vit_rpe.utils.cost import cost_per_image
    from vit_rpe.utils.trainer import instantiate_trainer

    datamodule, model = build_run(cfg, ckpt_path=path)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))

    loggers = instantiate_named(cfg.get("logger"))
    trainer = instantiate_trainer(cfg.trainer, logger=loggers or False)
    results = trainer.test(model, datamodule=datamodule)
    metrics = {k: to_float(v) for k, v in (results[0] if results else {}).items()}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    metrics.update(
        ckpt_path=path,
        data=str(cfg.data._target_),
        image_size=plain_size(datamodule.image_size),
        output_dir=str(output_dir),
    )
    if trainer.is_global_zero:
        device = trainer.strategy.root_device
        net = uncompiled(model.net).to(device)
        metrics.update(
            cost_per_image(net, datamodule.data_config["input_size"], batch_size=datamodule.eval_batch_size)
        )
        write_metrics(metrics, output_dir / "metrics.json")
        print_metrics(metrics, title=f"test of {path}")
    return metrics


def plain_size(size: int | Sequence[int]) -> int | list[int]:
    """An image size for metrics.json: the side of a square, else [height, width]."""
    if isinstance(size, int):
        return size
    return int(size[0]) if size[0] == size[1] else [int(s) for s in size]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    run_job(evaluate, cfg)


if __name__ == "__main__":
    main()

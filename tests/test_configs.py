"""Every option of every config group composes, resolves, and (where offline-safe) instantiates."""

import importlib.util

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_config

GROUPS = [
    "data",
    "model",
    "model/net",
    "rpe",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "hydra",
    "experiment",
    "variant",
    "debug",
    "hparams_search",
]
NEEDS_PLUGIN = {"hparams_search": "hydra_plugins.hydra_optuna_sweeper"}


def options():
    for group in GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            yield pytest.param(group, path.stem, id=f"{group}={path.stem}")


def plugin_missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


@pytest.mark.parametrize("group,option", list(options()))
def test_option_composes_and_resolves(group, option, tmp_path):
    if group in NEEDS_PLUGIN and plugin_missing(NEEDS_PLUGIN[group]):
        pytest.skip(f"{group}={option} needs the optional extra that provides {NEEDS_PLUGIN[group]}")
    cfg = compose_config("train", [f"{group}={option}"], tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation has a value
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_ == "lightning.Trainer"
    if group in ("data", "model", "model/net", "rpe") and cfg.model.net._target_.startswith(
        "vit_rpe.models.vit"
    ):
        datamodule = instantiate(cfg.data)
        assert datamodule.num_classes == cfg.data.num_classes
        model = instantiate(cfg.model)
        assert model.net.num_classes == cfg.data.num_classes


def test_overrides_reach_the_backbone_task_and_data(tmp_path):
    cfg = compose_config(
        "train",
        ["model.net.depth=6", "model.optimizer.lr=5e-4", "data.batch_size=256", "trainer.max_epochs=5"],
        tmp_path,
    )
    model = instantiate(cfg.model)
    assert len(model.net.blocks) == 6 and model.make_optimizer.keywords["lr"] == 5e-4
    assert instantiate(cfg.data).batch_size == 256 and cfg.trainer.max_epochs == 5


def test_data_shape_flows_into_the_model(tmp_path):
    cfg = compose_config("train", ["data=mnist"], tmp_path)
    OmegaConf.resolve(cfg)
    assert (cfg.model.net.img_size, cfg.model.net.in_chans, cfg.model.num_classes) == (28, 1, 10)

"""Every option of every config group composes, resolves, and (where offline-safe) instantiates."""

import importlib.util
import shutil

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_config

GROUPS = [
    "data",
    "model",
    "model/net",
    "recipe",
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
    choice = f"{group}@_global_={option}" if group == "recipe" else f"{group}={option}"  # docs/configs.md
    cfg = compose_config("train", [choice], tmp_path)
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


# data option -> (patches per side, embed_dim, lr, max_epochs, batch_size) of its recipe
RECIPES = {
    "digits": (4, 96, 2e-3, 40, 32),
    "mnist": (7, 64, 3e-3, 20, 128),
    "cifar10": (8, 192, 1e-3, 100, 128),
    "cifar100": (8, 192, 1e-3, 100, 128),
    "svhn": (8, 192, 1e-3, 100, 128),
    "tiny_imagenet": (8, 192, 1e-3, 100, 128),
    "image_folder": (8, 192, 1e-3, 100, 64),
    "hf": (8, 192, 1e-3, 100, 64),
}


def test_every_recipe_is_a_data_options_and_every_shipped_one_is_checked():
    """A recipe is optional (a new dataset needs none) and chosen by the data option's name."""
    recipes = {p.stem for p in (CONF_DIR / "recipe").glob("*.yaml")}
    assert recipes <= {p.stem for p in (CONF_DIR / "data").glob("*.yaml")} and recipes == set(RECIPES)


@pytest.mark.parametrize("data", sorted(RECIPES))
def test_each_data_option_gets_its_network_and_recipe(data, tmp_path):
    cfg = compose_config("train", [f"data={data}"], tmp_path)
    grid, width, lr, epochs, batch = RECIPES[data]
    assert cfg.data.image_size // cfg.model.net.patch_size == grid
    assert (cfg.model.net.embed_dim, cfg.model.optimizer.lr) == (width, lr)
    assert (cfg.trainer.max_epochs, cfg.data.batch_size) == (epochs, batch)
    OmegaConf.resolve(cfg)
    for option in ("performer", "linear"):  # the attention variants take the same recipe
        other = compose_config("train", [f"data={data}", f"model={option}"], tmp_path)
        assert other.model.net.attention == option
        assert other.model.net.patch_size == cfg.model.net.patch_size and other.trainer.max_epochs == epochs


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data=cifar10", "model/net=tiny"], {"model.net.patch_size": 16, "model.optimizer.lr": 1e-3}),
        (["data=mnist", "model.net.patch_size=2"], {"model.net.patch_size": 2, "model.net.embed_dim": 64}),
        (["data=mnist", "trainer.max_epochs=3"], {"trainer.max_epochs": 3}),
        (["data=mnist", "trainer=gpu"], {"trainer.max_epochs": 20, "trainer.accelerator": "gpu"}),
        (["data=cifar10", "model.optimizer.lr=5e-4"], {"model.optimizer.lr": 5e-4}),
        (["data=mnist", "recipe@_global_=cifar10"], {"trainer.max_epochs": 100, "model.net.patch_size": 4}),
        (["data=mnist", "debug=fdr"], {"trainer.max_epochs": 1}),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_explicit_choices_win_over_the_recipe(overrides, expected, tmp_path):
    cfg = compose_config("train", overrides, tmp_path)
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected


def test_an_experiment_wins_over_the_recipe_of_the_data_it_picks(tmp_path):
    """A study experiment picks its data and model; the recipe of that data fills in the rest."""
    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    (conf / "experiment" / "study.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /data: cifar10\n  - override /model: performer\n"
        "  - override /trainer: gpu\n"
        "trainer:\n  max_epochs: 40\n"
        "model:\n  net:\n    depth: 4\n"
    )
    cfg = compose_config("train", ["experiment=study"], tmp_path / "run", conf_dir=conf)
    assert (cfg.trainer.max_epochs, cfg.model.net.depth) == (40, 4)  # the experiment's
    assert (cfg.model.net.patch_size, cfg.model.net.embed_dim, cfg.model.optimizer.lr) == (4, 192, 1e-3)
    assert cfg.model.net.attention == "performer"
    cfg = compose_config("train", ["experiment=study", "data=mnist"], tmp_path / "run", conf_dir=conf)
    assert (cfg.model.net.patch_size, cfg.trainer.max_epochs) == (4, 40)  # the command line's data
    assert cfg.data.image_size == 28


@pytest.mark.parametrize("model", ["timm_vit", "hf_vit"])
def test_pretrained_models_get_no_from_scratch_recipe(model, tmp_path):
    """The adapter's own config, whatever the data: no patch size, width, lr or epochs of a recipe."""
    adapter = OmegaConf.to_container(compose_config("train", [f"model={model}"], tmp_path).model)
    for data in sorted(RECIPES):
        cfg = compose_config("train", [f"model={model}", f"data={data}"], tmp_path)
        assert OmegaConf.to_container(cfg.model) == adapter  # unresolved: ${data.num_classes} as written
        assert cfg.trainer.max_epochs == 10  # trainer/default's, not a recipe's


@pytest.mark.parametrize("data", sorted(RECIPES))
def test_eval_composes_with_every_data_option(data, tmp_path):
    cfg = compose_config("eval", [f"data={data}", "ckpt_path=x.ckpt"], tmp_path)
    assert cfg.data._target_ and "model" not in cfg


@pytest.mark.parametrize("path", sorted((CONF_DIR / "experiment").glob("*.yaml")), ids=lambda p: p.stem)
def test_an_experiment_that_sweeps_is_always_a_sweep(path):
    """docs/configs.md, Multirun: sweeper params <=> hydra.mode MULTIRUN, in every experiment."""
    hydra = OmegaConf.load(path).get("hydra") or {}
    sweeps = bool((hydra.get("sweeper") or {}).get("params"))
    assert (hydra.get("mode") == "MULTIRUN") == sweeps, (
        f"{path.name}: sweeps={sweeps}, mode={hydra.get('mode')}"
    )


def test_rope_mixed_is_rope_with_the_mixed_variant(tmp_path):
    short = compose_config("train", ["rpe=rope_mixed"], tmp_path)
    spelled = compose_config("train", ["rpe=rope", "model.net.rpe_kwargs.variant=mixed"], tmp_path)
    assert short.model.net.rpe == "rope" and short.model.net.rpe_kwargs.variant == "mixed"
    assert OmegaConf.to_container(short.model) == OmegaConf.to_container(spelled.model)

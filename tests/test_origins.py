"""python -m vit_rpe.origins names the file (or override) that set each key, as Hydra merged them."""

from __future__ import annotations

from omegaconf import OmegaConf

from tests.conftest import compose_config
from vit_rpe.origins import main, origins


def test_each_key_is_named_with_the_last_file_that_wrote_it():
    found = origins(["data=cifar10", "model=performer", "rpe=exp", "model.optimizer.lr=3e-4"])
    assert found["model.optimizer.weight_decay"].source == "recipe/cifar10.yaml"
    assert found["trainer.max_epochs"].source == "recipe/cifar10.yaml"
    assert found["model.optimizer.betas"].source == "model/vit.yaml"
    assert found["model.net.attention"].source == "model/performer.yaml"
    assert found["model.net.rpe_kwargs.init.init_rate"].source == "rpe/exp.yaml"
    assert found["data.batch_size"].source == "data/cifar10.yaml"
    assert found["model.optimizer.lr"].source == "the command line: model.optimizer.lr=3e-4"


def test_nested_defaults_and_experiments_are_followed():
    """image_folder's recipe is tiny_imagenet's (a defaults entry inside the recipe); the study
    picks a named network over the recipe's and sets its own lr."""
    assert origins(["data=image_folder"])["model.net.patch_size"].source == "recipe/tiny_imagenet.yaml"
    found = origins(["experiment=cifar10_attention_study"])
    assert found["model.net.embed_dim"].source == "model/net/seed003.yaml"
    assert found["model.optimizer.lr"].source == "experiment/cifar10_attention_study.yaml"
    assert found["model.optimizer.weight_decay"].source == "recipe/cifar10.yaml"


def test_the_values_are_those_of_the_composed_config(tmp_path):
    overrides = ["data=mnist", "model=linear", "rpe=poly", "trainer.max_epochs=3"]
    cfg = OmegaConf.to_container(compose_config("train", overrides, tmp_path))
    for key, origin in origins(overrides).items():
        if not key.startswith(("hydra.", "paths.")):  # compose_config moves the paths into tmp_path
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert node == origin.value, key


def test_the_command_prints_the_asked_keys_with_their_files(capsys):
    main(["data=mnist", "--key", "trainer.max_epochs", "--key", "model.net.patch_embed"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["model.net.patch_embed:", "trainer.max_epochs:"]
    assert lines[0].endswith("# recipe/mnist.yaml") and "conv_stem" in lines[0]
    assert lines[1].endswith("# recipe/mnist.yaml") and " 20 " in lines[1]

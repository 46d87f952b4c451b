"""README, "Add your own dataset": a datamodule and one data config, both outside the package and
its config tree, train like a shipped dataset; a recipe for it is a third file, optional."""

from __future__ import annotations

import textwrap

import pytest

from tests.conftest import LEARNS, compose_config
from vit_rpe.origins import origins
from vit_rpe.train import train

DATAMODULE = '''
import torch

from vit_rpe.data import ImageDataModule


class StripesDataModule(ImageDataModule):
    """8x8 grey images of horizontal (class 0) or vertical (class 1) stripes, with noise."""

    native_size = (8, 8)
    default_in_chans = 1
    default_num_classes = 2
    default_mean = (0.5,)
    default_std = (0.3,)

    def load_splits(self):
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 2, (256,), generator=g)
        rows = (torch.arange(8) % 2).float().view(8, 1).expand(8, 8)
        pattern = torch.where(labels.view(-1, 1, 1) == 0, rows, rows.T)
        noisy = (pattern * 200 + torch.rand(256, 8, 8, generator=g) * 55).to(torch.uint8)
        images = noisy.unsqueeze(1)
        cut = {"train": slice(0, 192), "val": slice(192, 224), "test": slice(224, 256)}
        return {name: (images[part], labels[part]) for name, part in cut.items()}
'''

DATA_CONFIG = """
# Stripes: our own dataset (README, Add your own dataset).
_target_: stripes.StripesDataModule
data_dir: ${paths.data_dir}
batch_size: 32
num_workers: 0
image_size: 8
in_chans: 1
num_classes: 2
seed: ${seed}
"""

RECIPE = """
# @package _global_
model:
  net:
    patch_size: 2
trainer:
  max_epochs: 7
"""


@pytest.fixture
def own_dataset(tmp_path, monkeypatch):
    """The two files of the walk, written in tmp_path: code/stripes.py and conf/data/stripes.yaml."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "stripes.py").write_text(textwrap.dedent(DATAMODULE))
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "stripes.yaml").write_text(textwrap.dedent(DATA_CONFIG))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return tmp_path / "conf"


def test_a_dataset_of_two_files_trains(own_dataset, tmp_path):
    searchpath = f"hydra.searchpath=[file://{own_dataset}]"
    overrides = [
        searchpath,
        "data=stripes",
        "model.net.patch_size=2",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        *LEARNS,
    ]
    cfg = compose_config("train", overrides, tmp_path / "run")
    assert cfg.model.net.num_classes == 2 and cfg.model.optimizer.lr == 1e-2
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.9, metrics  # stripes: easy once the model learns anything
    assert (tmp_path / "run" / "metrics.json").is_file()

    where = origins(overrides, "train")
    assert where["data._target_"].source.endswith("/data/stripes.yaml")
    assert str(own_dataset) in where["data._target_"].source  # the user's tree, not ours
    assert where["model.net.patch_size"].source == "the command line: model.net.patch_size=2"


def test_an_optional_recipe_is_a_third_file(own_dataset, tmp_path):
    searchpath = f"hydra.searchpath=[file://{own_dataset}]"
    before = compose_config("train", [searchpath, "data=stripes"], tmp_path / "run")
    (own_dataset / "recipe").mkdir()
    (own_dataset / "recipe" / "stripes.yaml").write_text(RECIPE)
    after = compose_config("train", [searchpath, "data=stripes"], tmp_path / "run")
    assert (before.model.net.patch_size, before.trainer.max_epochs) == (8, 10)  # model/vit.yaml's, trainer's
    assert (after.model.net.patch_size, after.trainer.max_epochs) == (2, 7)  # the recipe's
    assert origins([searchpath, "data=stripes"])["trainer.max_epochs"].source.endswith("/recipe/stripes.yaml")

"""``python -m vit_rpe.predict``: a checkpoint classifies image files on disk as its test did.

The test images of a run are written to disk as PNG files; predicting them from the checkpoint
alone (no data config) must give the accuracy ``eval`` gives on the same images through the
datamodule, for the from-scratch ViT (digits, MNIST-format files, real MNIST when
../shared/data/mnist is here), a tiny timm ViT and a tiny local HuggingFace ViT (their own input
size and normalisation).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from tests.conftest import FAST, LEARNS, compose_config, run_main
from tests.helpers import pretrained_source
from vit_rpe.data.synthetic import class_images, write_mnist, write_split_images
from vit_rpe.eval import evaluate
from vit_rpe.predict import EXIT_SOME_FAILED, predict, run
from vit_rpe.train import train
from vit_rpe.utils.errors import CheckpointError, ConfigError, DataError

TEST_BATCHES = 4  # eval and predict see the first TEST_BATCHES batches of the test split


def train_run(folder: Path, overrides: list[str]) -> tuple[str, object]:
    """A tiny trained run: its best checkpoint and its config."""
    cfg = compose_config("train", [*FAST, *LEARNS, "trainer.max_epochs=2", *overrides], folder / "run")
    metrics = train(cfg)
    return metrics["best_ckpt"], cfg


def accuracy_on_files(ckpt: str, cfg, folder: Path, data: tuple[str, ...] = ()) -> tuple[float, float]:
    """predict's accuracy on the first TEST_BATCHES batches of the test split written to disk, and
    eval's on the same images through the datamodule (``data``: eval's data overrides)."""
    datamodule = instantiate(cfg.data)
    count = TEST_BATCHES * datamodule.eval_batch_size
    labels = write_split_images(datamodule, "test", folder / "images", count)
    names = datamodule.class_names
    predictions = predict(ckpt, folder / "images", top_k=3, batch_size=50, device="cpu")
    assert [Path(p.path).name for p in predictions] == sorted(p.name for p in (folder / "images").iterdir())
    correct = [p.classes[0] == names[label] for p, label in zip(predictions, labels)]
    tested = evaluate(
        compose_config(
            "eval",
            ["trainer=cpu", f"ckpt_path={ckpt}", f"trainer.limit_test_batches={TEST_BATCHES}", *data],
            folder / "eval",
        )
    )
    return float(np.mean(correct)), tested["test/acc"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return train_run(
        tmp_path_factory.mktemp("digits"), ["model.net.patch_size=4", "trainer.limit_train_batches=20"]
    )


def test_predictions_on_files_match_the_test_accuracy_digits(digits_run, tmp_path):
    ckpt, cfg = digits_run
    predicted, tested = accuracy_on_files(ckpt, cfg, tmp_path)
    assert predicted == pytest.approx(tested, abs=1e-6)
    assert tested > 0.3  # it learned something: the comparison means something


def mnist_format(folder: Path) -> Path:
    """A small dataset in MNIST's IDX files (grey class colours plus noise, 28x28)."""
    rng = np.random.default_rng(0)
    train_y, test_y = np.arange(600) % 10, np.arange(200) % 10
    train_x = class_images(train_y, 28, rng, channels=1)[..., 0]
    test_x = class_images(test_y, 28, rng, channels=1)[..., 0]
    return write_mnist(folder, train_x, train_y.astype(np.uint8), test_x, test_y.astype(np.uint8))


def test_predictions_on_files_match_the_test_accuracy_mnist_format(tmp_path):
    mnist = mnist_format(tmp_path / "mnist")
    data = ["data=mnist", f"data.data_dir={mnist}", "data.download=false", "data.val_size=100"]
    data = [*data, "data.batch_size=32"]
    ckpt, cfg = train_run(tmp_path, [*data, "model.net.patch_size=7", "model.net.patch_embed=linear"])
    predicted, tested = accuracy_on_files(ckpt, cfg, tmp_path, data)
    assert predicted == pytest.approx(tested, abs=1e-6)


def test_predictions_on_files_match_the_test_accuracy_real_mnist(real_mnist_folder, tmp_path):
    data = ["data=mnist", f"data.data_dir={real_mnist_folder}", "data.download=false"]
    data = [*data, "data.batch_size=32"]
    ckpt, cfg = train_run(tmp_path, [*data, "model.net.patch_size=7", "model.net.patch_embed=linear"])
    predicted, tested = accuracy_on_files(ckpt, cfg, tmp_path, data)
    assert predicted == pytest.approx(tested, abs=1e-6)


@pytest.mark.parametrize("model", ["timm_vit", "hf_vit"])
def test_predictions_of_a_pretrained_backbone_use_its_preprocessing(model, tmp_path, monkeypatch):
    """Fine-tuned at 16x16 with the checkpoint's mean and std: predict resizes and normalises the
    8x8 digit files the same way, from the checkpoint alone (the source is deleted, no hub)."""
    source = tmp_path / "source"
    scratch_free = [o for o in FAST if not o.startswith("model.")]
    cfg = compose_config(
        "train", [*scratch_free, f"model={model}", *pretrained_source(model, source)], tmp_path / "run"
    )
    ckpt = train(cfg)["best_ckpt"]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["input_config"]
    assert saved["image_size"] == [16, 16] and saved["decode_size"] == [8, 8]
    assert saved["mean"] != pytest.approx([0.305])  # the pretrained checkpoint's, not the digits'
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    predicted, tested = accuracy_on_files(ckpt, cfg, tmp_path)
    assert predicted == pytest.approx(tested, abs=1e-6)


def test_any_mode_and_size_is_converted_like_the_training_images(digits_run, tmp_path):
    """A grey model gets the same pixels from a grey, RGB or RGBA file; any size is read."""
    ckpt, cfg = digits_run
    datamodule = instantiate(cfg.data)
    write_split_images(datamodule, "test", tmp_path / "grey", 20)
    for mode in ("RGB", "RGBA"):
        (tmp_path / mode).mkdir()
        for path in sorted((tmp_path / "grey").iterdir()):
            Image.open(path).convert(mode).save(tmp_path / mode / path.name)
    big = tmp_path / "big.jpg"
    Image.open(next((tmp_path / "grey").iterdir())).resize((80, 60)).convert("RGB").save(big)
    runs = {name: predict(ckpt, tmp_path / name, device="cpu") for name in ("grey", "RGB", "RGBA")}
    for mode in ("RGB", "RGBA"):
        for a, b in zip(runs["grey"], runs[mode]):
            assert a.classes == b.classes and a.probs == pytest.approx(b.probs, abs=1e-6)
    (one,) = predict(ckpt, big, top_k=50, device="cpu")
    assert one.error is None and len(one.classes) == 10  # top_k is at most the number of classes
    assert sum(one.probs) == pytest.approx(1.0, abs=1e-5)


def test_the_cli_writes_predictions_csv_lists_unreadable_files_and_exits_2(
    digits_run, tmp_path, monkeypatch, capfd
):
    """``python -m vit_rpe.predict``'s main in this process (a real start-up: tests/test_packaging.py)."""
    ckpt, cfg = digits_run
    images = tmp_path / "images"
    labels = write_split_images(instantiate(cfg.data), "test", images, 5)
    (images / "broken.png").write_bytes(b"\x89PNG this is not an image")
    (images / "notes.txt").write_text("not an image extension: not read from a folder")
    monkeypatch.setenv("COLUMNS", "300")  # unwrapped tables
    args = [f"ckpt_path={ckpt}", f"images={images}", "top_k=2", f"hydra.run.dir={tmp_path}/out"]
    assert run_main("vit_rpe.predict", *args, monkeypatch=monkeypatch) == EXIT_SOME_FAILED
    stdout = capfd.readouterr().out
    assert "broken.png" in stdout and "could not be read" in stdout
    with (tmp_path / "out" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "error"]
    assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in images.glob("*.png"))
    broken = rows[-1]  # sorted: digits before letters
    assert broken["class_1"] == "" and "UnidentifiedImageError" in broken["error"]
    assert all(r["error"] == "" and float(r["prob_1"]) >= float(r["prob_2"]) for r in rows[:-1])
    assert len(rows) == len(labels) + 1


def test_a_glob_and_a_list_of_files(digits_run, tmp_path):
    ckpt, cfg = digits_run
    write_split_images(instantiate(cfg.data), "test", tmp_path, 6)
    by_glob = predict(ckpt, str(tmp_path / "00000[0-2]_*.png"), device="cpu")
    assert [Path(p.path).name[:6] for p in by_glob] == ["000000", "000001", "000002"]
    by_list = predict(ckpt, [p.path for p in by_glob], device="cpu")
    assert [p.classes for p in by_list] == [p.classes for p in by_glob]


def test_an_old_checkpoint_needs_the_data_it_was_trained_on(digits_run, tmp_path):
    """A checkpoint saved without input_config: refused with the fix, then read with data=digits
    to the same predictions."""
    ckpt, cfg = digits_run
    old = tmp_path / "old.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    del saved["input_config"]
    torch.save(saved, old)
    write_split_images(instantiate(cfg.data), "test", tmp_path / "images", 8)
    with pytest.raises(CheckpointError, match=r"holds no input_config .* data=digits"):
        predict(old, tmp_path / "images", device="cpu")
    out = tmp_path / "out"
    given = run(
        compose_config("predict", [f"ckpt_path={old}", f"images={tmp_path / 'images'}", "data=digits"], out)
    )
    assert given["failed"] == 0
    with (out / "predictions.csv").open() as f:
        from_old = [row["class_1"] for row in csv.DictReader(f)]
    assert from_old == [p.classes[0] for p in predict(ckpt, tmp_path / "images", device="cpu")]


# --- bad input (docs/errors.md) -----------------------------------------------------------------


def test_predict_rejects_a_checkpoint_that_is_not_ours(digits_run, tmp_path):
    _, cfg = digits_run
    write_split_images(instantiate(cfg.data), "test", tmp_path / "images", 2)
    image = tmp_path / "images" / "000000_0.png"
    with pytest.raises(
        CheckpointError, match=r"cannot read checkpoint .*: it is a PNG image, not a checkpoint"
    ):
        predict(image, tmp_path / "images")  # an image given as the checkpoint
    plain = tmp_path / "net.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="is a plain state dict, not a Lightning checkpoint"):
        predict(plain, tmp_path / "images")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, other)
    with pytest.raises(
        CheckpointError, match=r"is not a Lightning checkpoint of vit_rpe\.tasks\.ImageClassifier"
    ):
        predict(other, tmp_path / "images")


def test_predict_rejects_missing_and_empty_image_sources(digits_run, tmp_path):
    ckpt, _ = digits_run
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="is a folder with no image files"):
        predict(ckpt, empty)
    with pytest.raises(DataError, match="does not exist"):
        predict(ckpt, tmp_path / "nowhere")
    with pytest.raises(DataError, match="matches no file"):
        predict(ckpt, str(tmp_path / "*.jpg"))
    with pytest.raises(ConfigError, match="top_k=0 must be at least 1"):
        predict(ckpt, empty, top_k=0)


def test_predict_without_images_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="images is required"):
        run(compose_config("predict", ["ckpt_path=x.ckpt"], tmp_path))

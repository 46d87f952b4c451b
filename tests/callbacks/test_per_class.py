"""Per-class test results: per_class.csv and confusion_matrix.png in the run directory, and the
macro averages in metrics.json, from train's test, eval, and eval under DDP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support
from torchmetrics.functional.classification import multiclass_confusion_matrix

from tests.conftest import FAST, LEARNS, compose_config
from tests.helpers import FORKED_DDP
from vit_rpe.callbacks.per_class import (
    PER_CLASS_COLUMNS,
    class_scores,
    macro_scores,
    most_confused,
    plot_confusion_matrix,
)
from vit_rpe.eval import evaluate
from vit_rpe.train import train

pytestmark = pytest.mark.plots  # the runs here draw their confusion matrices


def test_scores_match_scikit_learn():
    """Class 3 has no test image but is predicted, class 4 is never predicted."""
    rng = np.random.default_rng(0)
    targets = rng.choice([0, 1, 2, 4, 5], size=300)
    preds = np.where(rng.random(300) < 0.6, targets, rng.choice([0, 1, 2, 3, 5], size=300))
    preds[targets == 4] = 5
    confusion = multiclass_confusion_matrix(torch.tensor(preds), torch.tensor(targets), num_classes=6)
    scores = class_scores(confusion)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=range(6), zero_division=np.nan
    )
    for ours, theirs in ((scores["precision"], precision), (scores["recall"], recall)):
        np.testing.assert_allclose(ours.numpy(), theirs, equal_nan=True)
    np.testing.assert_allclose(scores["support"].numpy(), support)
    present = [0, 1, 2, 4, 5]
    np.testing.assert_allclose(scores["f1"][present].numpy(), np.nan_to_num(f1[present]))
    assert scores["recall"][3].isnan() and scores["precision"][4].isnan() and scores["f1"][4] == 0
    macro_f1, balanced = macro_scores(confusion)
    assert macro_f1.item() == pytest.approx(f1_score(targets, preds, average="macro", labels=present))
    assert balanced.item() == pytest.approx(balanced_accuracy_score(targets, preds))


def read_per_class(folder: Path) -> list[dict]:
    with (folder / "per_class.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == PER_CLASS_COLUMNS
        return list(reader)


def check_per_class(folder: Path, metrics: dict, images: int) -> list[dict]:
    """The files are there, the rows sum back to the test accuracy, the macro averages agree."""
    rows = read_per_class(folder)
    assert [row["class"] for row in rows] == [str(i) for i in range(10)]
    support = np.array([int(row["support"]) for row in rows])
    recall = np.array([float(row["recall"]) for row in rows])
    f1 = np.array([float(row["f1"] or 0) for row in rows])
    assert support.sum() == images
    assert (support * recall).sum() / support.sum() == pytest.approx(metrics["test/acc"], abs=1e-5)
    assert metrics["test/balanced_acc"] == pytest.approx(recall[support > 0].mean(), abs=1e-5)
    assert metrics["test/macro_f1"] == pytest.approx(f1[support > 0].mean(), abs=1e-5)
    written = json.loads((folder / "metrics.json").read_text())
    assert written["test/macro_f1"] == metrics["test/macro_f1"]
    assert written["test/balanced_acc"] == metrics["test/balanced_acc"]
    with Image.open(folder / "confusion_matrix.png") as image:
        assert image.format == "PNG" and min(image.size) >= 300
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("per_class") / "run"
    overrides = [*FAST, *LEARNS, "model.net.patch_size=4", "trainer.limit_train_batches=20"]
    return out, train(compose_config("train", overrides, out))


def test_training_writes_per_class_results(trained):
    out, metrics = trained
    rows = check_per_class(out, metrics, images=64)  # FAST tests 2 batches of 32
    assert 0 < metrics["test/macro_f1"] < 1 and len({row["recall"] for row in rows}) > 1


def test_eval_writes_them_and_ddp_writes_the_same(trained, tmp_path):
    """eval of 128 test images in one process (4 batches of 32) and in two (4 batches of 16 on
    each rank: the same images) writes the same per_class.csv."""
    _, metrics = trained
    base = ["trainer.limit_test_batches=4", f"ckpt_path={metrics['best_ckpt']}"]
    single = evaluate(compose_config("eval", ["trainer=cpu", *base, "data.batch_size=32"], tmp_path / "one"))
    check_per_class(tmp_path / "one", single, images=128)
    ddp = evaluate(compose_config("eval", [*FORKED_DDP, *base, "data.batch_size=16"], tmp_path / "ddp"))
    check_per_class(tmp_path / "ddp", ddp, images=128)
    assert (tmp_path / "ddp" / "per_class.csv").read_text() == (
        tmp_path / "one" / "per_class.csv"
    ).read_text()
    for key in ("test/acc", "test/macro_f1", "test/balanced_acc"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6)


def test_a_large_matrix_names_only_its_most_confused_classes(tmp_path):
    """200 classes, all right but for 3 -> 150 and 77 -> 3: those three are named first."""
    targets = torch.arange(200).repeat(5)
    preds = targets.clone()
    preds[(targets == 3).nonzero()[:3]] = 150
    preds[(targets == 77).nonzero()[:1]] = 3
    confusion = multiclass_confusion_matrix(preds, targets, num_classes=200)
    assert most_confused(confusion, 3) == [3, 77, 150]
    assert most_confused(confusion, 30) == [3, 77, 150]  # only classes with mistakes
    plot_confusion_matrix(confusion, [f"class {i}" for i in range(200)], tmp_path / "cm.png")
    with Image.open(tmp_path / "cm.png") as image:
        assert image.format == "PNG" and max(image.size) <= 1600

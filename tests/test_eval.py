"""``python -m vit_rpe.eval``: a saved checkpoint tests to the numbers its training run reported."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FAST, compose_config, run_main
from tests.helpers import pretrained_source
from vit_rpe.eval import evaluate
from vit_rpe.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import FAST

    out = tmp_path_factory.mktemp("trained") / "run"
    metrics = train(compose_config("train", [*FAST, "trainer.max_epochs=2"], out))
    return out, metrics


def test_eval_reproduces_the_training_runs_test_metrics(trained, tmp_path):
    _, metrics = trained
    best = metrics["best_ckpt"]
    out = tmp_path / "eval"
    result = evaluate(
        compose_config("eval", ["trainer=cpu", f"ckpt_path={best}", "trainer.limit_test_batches=2"], out)
    )
    assert result["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert result["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    written = json.loads((out / "metrics.json").read_text())
    assert written["test/acc"] == result["test/acc"] and written["ckpt_path"] == best
    assert (out / "config.yaml").is_file()


def test_eval_cli_writes_metrics_in_its_run_dir(trained, tmp_path, monkeypatch):
    """``python -m vit_rpe.eval``'s main in this process (a real start-up: tests/test_packaging.py)."""
    _, metrics = trained
    args = [
        f"ckpt_path={metrics['best_ckpt']}",
        "trainer=cpu",
        "trainer.limit_test_batches=2",
        f"hydra.run.dir={tmp_path}/cli_eval",
    ]
    assert run_main("vit_rpe.eval", *args, monkeypatch=monkeypatch) == 0
    written = json.loads((Path(tmp_path) / "cli_eval" / "metrics.json").read_text())
    assert written["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert written["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


@pytest.mark.parametrize("model", ["timm_vit", "hf_vit"])
def test_eval_of_a_fine_tuned_pretrained_run_needs_only_its_checkpoint(model, tmp_path, monkeypatch):
    """The backbone is rebuilt without its source (gone, and no hub), and the test images are
    resized and normalised as in training, so eval scores the checkpoint as its run did."""
    source = tmp_path / "source"
    trainer = [o for o in FAST if not o.startswith("model.")]
    metrics = train(
        compose_config(
            "train", [*trainer, f"model={model}", *pretrained_source(model, source)], tmp_path / "run"
        )
    )
    shutil.rmtree(source)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    overrides = ["trainer=cpu", f"ckpt_path={metrics['best_ckpt']}", "trainer.limit_test_batches=2"]
    result = evaluate(compose_config("eval", overrides, tmp_path / "eval"))
    assert result["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert result["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


@pytest.mark.parametrize("model", ["timm_vit", "hf_vit"])
def test_a_fine_tuned_pretrained_run_resumes_without_its_source(model, tmp_path, monkeypatch):
    """Resuming rebuilds the backbone from the checkpoint's record of its source: the source file
    is gone and there is no hub, and the run goes on from its weights."""
    source = tmp_path / "source"
    trainer = [o for o in FAST if not o.startswith("model.")]
    first = train(
        compose_config(
            "train",
            [*trainer, f"model={model}", *pretrained_source(model, source), "trainer.max_epochs=1"],
            tmp_path / "run",
        )
    )
    shutil.rmtree(source)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    run_dir = tmp_path / "run"
    more = train(compose_config("train", [f"resume_dir={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert (first["epochs"], more["epochs"]) == (1, 2)
    assert "resolved_source" not in (run_dir / "config.yaml").read_text()  # the user's config, as written


def test_eval_loss_is_the_mean_over_images_whatever_the_batch_size(trained, tmp_path):
    """A run's test loss and eval's agree when eval batches differently (the data config's
    default batch size, not the experiment's): the loss is averaged over images, not batches."""
    _, metrics = trained
    losses = [
        evaluate(
            compose_config(
                "eval",
                ["trainer=cpu", f"ckpt_path={metrics['best_ckpt']}", f"data.batch_size={size}"],
                tmp_path / f"eval_{size}",
            )
        )["test/loss"]
        for size in (32, 100)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_eval_at_its_own_size_through_the_resolution_path_gives_its_test_accuracy(trained, tmp_path):
    """data.image_size set to the training size (8 px, a 4x4 grid): exactly the run's numbers,
    and the data came from the checkpoint (no data= given)."""
    _, metrics = trained
    overrides = ["trainer=cpu", f"ckpt_path={metrics['best_ckpt']}", "trainer.limit_test_batches=2"]
    result = evaluate(compose_config("eval", [*overrides, "data.image_size=8"], tmp_path / "own"))
    assert result["test/acc"] == metrics["test/acc"]
    assert result["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    assert result["image_size"] == 8 and result["data"].endswith("DigitsDataModule")
    for key in ("params", "gflops_per_image", "infer_images_per_sec"):
        assert result[key] > 0


@pytest.mark.parametrize("rpe", ["general", "exp"])
def test_eval_at_another_size_moves_the_model_to_the_new_grid(rpe, tmp_path):
    out = tmp_path / "run"
    metrics = train(compose_config("train", [*FAST, f"rpe={rpe}", "model.net.pos_embed=learned"], out))
    overrides = ["trainer=cpu", f"ckpt_path={metrics['best_ckpt']}", "trainer.limit_test_batches=2"]
    result = evaluate(compose_config("eval", [*overrides, "data.image_size=12"], tmp_path / "at12"))
    assert result["image_size"] == 12 and 0.0 <= result["test/acc"] <= 1.0
    assert result["gflops_per_image"] > metrics["gflops_per_image"]  # 36 tokens instead of 16
    written = json.loads((tmp_path / "at12" / "metrics.json").read_text())
    assert written["image_size"] == 12 and written["test/acc"] == result["test/acc"]


def test_eval_at_a_size_the_patch_does_not_divide_is_refused(trained, tmp_path):
    from vit_rpe.utils.errors import ConfigError

    _, metrics = trained
    cfg = compose_config(
        "eval", ["trainer=cpu", f"ckpt_path={metrics['best_ckpt']}", "data.image_size=9"], tmp_path
    )
    with pytest.raises(ConfigError, match=r"data\.image_size=9 is not divisible by the model's patch size 2"):
        evaluate(cfg)


@pytest.mark.plots
def test_training_with_eval_image_sizes_writes_one_evaluation_per_size(tmp_path):
    out = tmp_path / "run"
    metrics = train(compose_config("train", [*FAST, "rpe=exp", "eval_image_sizes=[8,12]"], out))
    own = json.loads((out / "evals" / "8px" / "metrics.json").read_text())
    other = json.loads((out / "evals" / "12px" / "metrics.json").read_text())
    assert own["test/acc"] == metrics["test/acc"] and own["image_size"] == 8
    assert other["image_size"] == 12 and {"test/acc", "test/loss", "gflops_per_image"} <= set(other)
    written = json.loads((out / "metrics.json").read_text())
    assert {"params", "gflops_per_image", "infer_images_per_sec"} <= set(written)
    # each size has its own per-class results; the run's are its own test's, not the last size's
    for folder, acc in ((out, metrics["test/acc"]), (out / "evals" / "12px", other["test/acc"])):
        rows = list(csv.DictReader((folder / "per_class.csv").open()))
        support = sum(int(r["support"]) for r in rows)
        recalled = sum(int(r["support"]) * float(r["recall"] or 0) for r in rows)
        assert recalled / support == pytest.approx(acc, abs=1e-4), folder
        assert (folder / "confusion_matrix.png").is_file()

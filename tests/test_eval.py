"""``python -m vit_rpe.eval``: a saved checkpoint tests to the numbers its training run reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from tests.conftest import FAST, ROOT, compose_config
from tests.models.test_pretrained import TINY_TIMM, save_tiny_hf_vit
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


def test_eval_cli_writes_metrics_in_its_run_dir(trained, tmp_path):
    _, metrics = trained
    cmd = [
        sys.executable,
        "-m",
        "vit_rpe.eval",
        f"ckpt_path={metrics['best_ckpt']}",
        "trainer=cpu",
        "trainer.limit_test_batches=2",
        f"hydra.run.dir={tmp_path}/cli_eval",
    ]
    done = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((Path(tmp_path) / "cli_eval" / "metrics.json").read_text())
    assert written["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert written["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def pretrained_source(model: str, folder: Path) -> list[str]:
    """A tiny pretrained checkpoint in the library's own format, and the overrides that fine-tune it
    at 16x16 with the checkpoint's normalisation (digits are 8x8, with their own mean and std)."""
    if model == "hf_vit":
        save_tiny_hf_vit(folder, image_size=16)
        return [f"model.net.name_or_path={folder}"]
    torch.manual_seed(0)
    weights = folder / "vit_tiny.safetensors"
    folder.mkdir()
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_TIMM)
    safetensors.torch.save_file(source.state_dict(), weights)
    sizes = [f"+model.net.model_kwargs.{key}={value}" for key, value in TINY_TIMM.items()]
    return [
        "model.net.name=vit_tiny_patch16_224",
        f"model.net.checkpoint_path={weights}",
        "model.net.img_size=16",
        "model.net.patch_size=4",
        *sizes,
    ]


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

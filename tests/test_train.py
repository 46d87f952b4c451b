"""End to end: the composed config trains, tests, and writes its run directory."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.conftest import LEARNS, ROOT, run_train_main
from vit_rpe.train import train
from vit_rpe.utils.errors import ConfigError, DataError
from vit_rpe.utils.run import exit_on_user_error, user_error_of

METRICS_KEYS = {
    "test/acc",
    "test/loss",
    "val/acc_best",
    "params",
    "epochs",
    "seconds_per_epoch",
    "train_images_per_sec",
    "gflops_per_image",
    "infer_images_per_sec",
}


def read_csv_metrics(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_digits_run_writes_config_checkpoints_logs_and_metrics(train_config):
    cfg = train_config("trainer.max_epochs=2", *LEARNS, "model.net.patch_size=4")
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved.keys() >= METRICS_KEYS
    assert saved["epochs"] == 2 and saved["params"] > 0
    assert saved["test/acc"] > 0.25  # learned in 6 steps: chance is 0.1 (0.43 measured)
    assert saved["seconds_per_epoch"] > 0 and saved["train_images_per_sec"] > 0
    assert saved == json.loads(json.dumps(metrics))
    assert "${" not in (run_dir / "config.yaml").read_text(), "the saved config is resolved"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert any(p.name.startswith("epoch_") for p in (run_dir / "checkpoints").iterdir())
    rows = read_csv_metrics(run_dir)
    assert any(row.get("train/lr") for row in rows) and any(row.get("val/acc") for row in rows)


def test_val_acc_best_is_the_running_best_not_the_last_epoch(train_config):
    cfg = train_config("trainer.max_epochs=4", "trainer.limit_train_batches=2", "model.optimizer.lr=3e-3")
    metrics = train(cfg)
    epochs = [float(r["val/acc"]) for r in read_csv_metrics(Path(cfg.paths.output_dir)) if r.get("val/acc")]
    assert len(epochs) == 4
    assert metrics["val/acc_best"] == pytest.approx(max(epochs))


def test_mnist_from_real_idx_files(train_config, real_mnist_folder):
    cfg = train_config(
        "data=mnist",
        f"data.data_dir={real_mnist_folder}",
        "data.val_size=1000",
        "data.download=false",
        *LEARNS,
        "model.net.patch_size=14",  # a 2x2 grid, through the linear embedding (a conv stem needs 2**k)
        "model.net.patch_embed=linear",
    )
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.3  # learned in 3 steps: chance is 0.1 (0.55 measured)
    assert (real_mnist_folder / "train-images-idx3-ubyte.gz").is_file()
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


@pytest.mark.parametrize(
    "arm",
    [
        ("model=performer", "rpe=rope"),
        ("model=linear", "rpe=rope"),
        ("model=vit", "rpe=rope", "model.net.rpe_kwargs.variant=mixed"),
    ],
    ids=["performer-rope", "linear-rope", "vit-rope-mixed"],
)
def test_rope_learns_real_mnist_with_every_kernel(arm, train_config, real_mnist_folder):
    """2-D RoPE through the whole run, on the real IDX files, with each kernel: it learns."""
    cfg = train_config(
        *arm,
        "data=mnist",
        f"data.data_dir={real_mnist_folder}",
        "data.val_size=1000",
        "data.download=false",
        *LEARNS,
        "model.net.patch_size=14",  # a 2x2 grid, as test_mnist_from_real_idx_files
        "model.net.patch_embed=linear",
    )
    metrics = train(cfg)
    assert cfg.model.net.rpe == "rope"
    assert metrics["test/acc"] > 0.3, metrics  # chance is 0.1 (measured 0.44, 0.47, 0.44)


@pytest.mark.slow
def test_learns_digits(train_config):
    """A short run of the quickstart recipe clears 90% test accuracy (20 epochs: about 40 s on one
    thread; learning at tiny sizes is in the default tests, tests/models/test_attention.py)."""
    cfg = train_config(
        "experiment=quickstart",
        "trainer.max_epochs=20",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        "trainer=cpu",
        fast=False,
    )
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.90, metrics


def test_patch_size_that_does_not_divide_the_image_exits_with_the_fix(train_config, capsys):
    cfg = train_config("model.net.patch_size=3")
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(train, cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "patch_size 3 does not divide the image height 8" in err and "[1, 2, 4, 8]" in err


def test_mnist_missing_offline_is_a_clear_error(train_config, tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    cfg = train_config("data=mnist", f"data.data_dir={tmp_path / 'empty'}")
    with pytest.raises(DataError, match="download failed"):
        train(cfg)


def test_data_metadata_must_agree(train_config):
    cfg = train_config("data.in_chans=3")
    with pytest.raises(SystemExit):
        exit_on_user_error(train, cfg)
    with pytest.raises(Exception) as err:
        instantiate(cfg.data)
    assert isinstance(user_error_of(err.value), ConfigError)
    assert "data.in_chans=3 but this dataset has 1" in str(user_error_of(err.value))


def test_cli_runs_and_prints_where_the_run_is(tmp_path, monkeypatch, capfd):
    """...and logs to one run.log, also with another task_name (quickstart) and once resumed.
    The command line's main in this process (the real one starts in tests/test_packaging.py)."""
    run_dir = tmp_path / "cli-run"
    args = [
        f"hydra.run.dir={run_dir}",
        "experiment=quickstart",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "model.net.depth=1",
        "model.net.embed_dim=16",
        "model.net.num_heads=2",
    ]
    assert run_train_main(*args, monkeypatch=monkeypatch) == 0
    assert f"run directory: {run_dir}" in "".join(capfd.readouterr())
    assert (run_dir / "metrics.json").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert [p.name for p in run_dir.glob("*.log")] == ["run.log"]
    first = (run_dir / "run.log").read_text()
    assert run_train_main(f"resume_dir={run_dir}", "trainer.max_epochs=2", monkeypatch=monkeypatch) == 0
    assert [p.name for p in run_dir.glob("*.log")] == ["run.log"]
    log = (run_dir / "run.log").read_text()
    assert log.startswith(first) and len(log) > len(first)  # the resumed run appended


def test_cli_unknown_option_lists_the_choices(tmp_path):
    cmd = [sys.executable, "-m", "vit_rpe.train", "model=transformerxl", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Could not find 'model/transformerxl'" in result.stderr and "vit" in result.stderr

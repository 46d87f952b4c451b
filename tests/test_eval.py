"""``python -m vit_rpe.eval``: a saved checkpoint tests to the numbers its training run reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose_config
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
    run_dir, _ = trained
    cmd = [
        sys.executable,
        "-m",
        "vit_rpe.eval",
        f"ckpt_path={run_dir}/checkpoints/last.ckpt",
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
    assert 0.0 <= written["test/acc"] <= 1.0 and "test/loss" in written

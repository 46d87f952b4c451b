"""A single run that fails leaves ``error.txt`` (the report says failed, with the reason); a
resume never writes into the run it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import FAST, compose_config
from vit_rpe.report import load_run
from vit_rpe.train import train
from vit_rpe.utils.run import run_job


def single_run(output_dir: Path, *overrides: str):
    hydra = ("hydra.mode=RUN", f"hydra.runtime.output_dir={output_dir}")
    return compose_config("train", (*FAST, *overrides, *hydra), output_dir)


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_a_failed_single_run_says_so_in_its_directory(tmp_path):
    run_dir = tmp_path / "single"
    with pytest.raises(SystemExit) as exit_info:  # a user error: exit 1, no traceback on the screen
        run_job(train, single_run(run_dir, "model.net.patch_size=3"))
    assert exit_info.value.code == 1
    run = load_run(run_dir)
    assert run.status == "failed" and run.error.startswith("ConfigError: ") and "patch_size" in run.error

    def broken(_):
        raise RuntimeError("a bug, not a user error")

    with pytest.raises(RuntimeError, match="a bug"):
        run_job(broken, single_run(tmp_path / "bug"))
    text = (tmp_path / "bug" / "error.txt").read_text()
    assert (
        text.startswith("Traceback")
        and load_run(tmp_path / "bug").error == "RuntimeError: a bug, not a user error"
    )


def test_a_refused_resume_writes_nothing_into_the_run(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("seed: 1\n")  # no checkpoints/last.ckpt: nothing to resume
    with pytest.raises(SystemExit):
        run_job(train, single_run(old, f"resume_dir={old}"))
    assert sorted(p.name for p in old.iterdir()) == ["config.yaml"]

"""resume_dir= on a run that has nothing left to do, or with a refused override: the run is left
byte for byte as it was (.hydra/ and the log included), through the real Hydra main."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import FAST, run_train_main

TINY = [o for o in FAST if o != "trainer.max_epochs=1"] + ["trainer.limit_train_batches=2"]


def digests(run_dir: Path) -> dict[str, str]:
    """Every file of the run directory (hidden ones included) -> its SHA-256."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def finished(tmp_path, monkeypatch) -> Path:
    """A run of one epoch that ended (metrics.json, .hydra/, run.log), started from the CLI."""
    run_dir = tmp_path / "run"
    assert (
        run_train_main(*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", monkeypatch=monkeypatch)
        == 0
    )
    assert {".hydra/overrides.yaml", "metrics.json", "run.log"} <= set(digests(run_dir))
    return run_dir


@pytest.mark.parametrize("early_stopped", [False, True], ids=["all-epochs", "early-stopped"])
def test_resuming_a_finished_run_does_nothing_and_changes_no_file(
    finished, monkeypatch, capsys, early_stopped
):
    if early_stopped:  # planned 3 epochs, stopped after 1: what EarlyStopping leaves
        config = finished / "config.yaml"
        config.write_text(config.read_text().replace("max_epochs: 1", "max_epochs: 3"))
    before = digests(finished)
    capsys.readouterr()
    assert run_train_main(f"resume_dir={finished}", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert (
        "this run already finished (metrics.json, 1 epoch): nothing to do; to train further, resume with a "
        "larger trainer.max_epochs" in out
    )
    assert digests(finished) == before


def test_a_finished_run_trains_on_with_more_epochs_also_after_a_second_stop(finished, monkeypatch):
    """max_epochs=3 trains on; killed in epoch 2, the old metrics.json (1 epoch) does not make the
    run look finished: resumed again, it ends at 3 epochs."""
    fault = "+callbacks.fault={_target_:tests.helpers.Crash,epoch:2}"
    code = run_train_main(f"resume_dir={finished}", "trainer.max_epochs=3", fault, monkeypatch=monkeypatch)
    assert code == 1
    assert json.loads((finished / "metrics.json").read_text())["epochs"] == 1  # the first run's
    assert run_train_main(f"resume_dir={finished}", "+callbacks.fault=null", monkeypatch=monkeypatch) == 0
    assert json.loads((finished / "metrics.json").read_text())["epochs"] == 3


def test_a_refused_resume_writes_nothing_into_the_run(finished, monkeypatch, capsys):
    before = digests(finished)
    assert run_train_main(f"resume_dir={finished}", "model=linear", monkeypatch=monkeypatch) == 1
    assert "config groups cannot be switched" in capsys.readouterr().err
    assert digests(finished) == before
    assert "model=linear" not in (finished / ".hydra" / "overrides.yaml").read_text()


def test_a_refused_new_run_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "new"
    assert (
        run_train_main(*TINY, "data.batch_size=0", f"hydra.run.dir={run_dir}", monkeypatch=monkeypatch) == 1
    )
    assert "error: data.batch_size must be at least 1" in capsys.readouterr().err
    assert not run_dir.exists()

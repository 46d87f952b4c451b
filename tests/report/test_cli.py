"""The report end to end: a 2x2 CLI sweep gives four rows and the plots; tables and plots from
hand-written runs; a clear error without runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import run_train_main
from tests.helpers import SWEEP_FAST
from tests.report.helpers import PNG_MAGIC, net, read_csv, write_run
from vit_rpe.report import PLOTS, main, make_report
from vit_rpe.utils.errors import UserError


def test_report_of_a_2x2_cli_sweep(tmp_path, monkeypatch):
    """The sweep runs in this process (its start-up is not the subject), the report as a user runs it."""
    sweep = tmp_path / "sweep"
    grid = ("-m", "model=vit,linear", "rpe=none,exp")
    args = (*grid, *SWEEP_FAST, "trainer.max_epochs=2", f"hydra.sweep.dir={sweep}")
    assert run_train_main(*args, monkeypatch=monkeypatch) == 0

    out = tmp_path / "report"
    report = subprocess.run(
        [sys.executable, "-m", "vit_rpe.report", str(sweep), "--out", str(out)],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr

    rows = read_csv(out / "report.csv")
    assert [(r["model"], r["rpe"]) for r in rows] == [
        ("vit", "none"),
        ("vit", "exp"),
        ("linear", "none"),
        ("linear", "exp"),
    ]
    assert [r["attention"] for r in rows] == ["softmax", "softmax", "linear", "linear"]
    assert {r["status"] for r in rows} == {"completed"} and {r["data"] for r in rows} == {"digits"}
    assert [r["label"] for r in rows] == [
        f"model={m}, rpe={r}" for m in ("vit", "linear") for r in ("none", "exp")
    ]
    for row in rows:
        metrics = json.loads((sweep / row["run"] / "metrics.json").read_text())
        assert float(row["val_acc_best"]) == pytest.approx(metrics["val/acc_best"])
        assert float(row["test_acc"]) == pytest.approx(metrics["test/acc"])
        assert int(row["params"]) == metrics["params"] and int(row["epochs"]) == 2
        assert float(row["sec_per_epoch"]) > 0 and float(row["images_per_sec"]) > 0

    markdown = (out / "report.md").read_text()
    assert markdown.count("| completed |") == 4 and "best val acc %" in markdown
    for name in PLOTS:
        image = (out / name).read_bytes()
        assert image.startswith(PNG_MAGIC) and len(image) > 5000, name
        assert f"]({name})" in markdown
    assert "4 runs" in report.stdout


def test_plots_and_table_from_hand_written_runs(tmp_path):
    for i, (attention, params) in enumerate((("softmax", 1000), ("linear", 50_000))):
        history = [{"epoch": e, "step": e, "val/acc": 0.3 + 0.1 * e + 0.05 * i} for e in range(3)]
        history += [{"epoch": e, "step": e, "train/epoch_time": 1.5 + i} for e in range(3)]
        metrics = {"val/acc_best": 0.5 + 0.05 * i, "test/acc": 0.49, "params": params, "epochs": 3}
        write_run(tmp_path / "sweep" / str(i), metrics, history, **net(attention))
    report = make_report(tmp_path / "sweep", tmp_path / "out")
    assert report == tmp_path / "out" / "report.md"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(PLOTS)
    text = report.read_text()
    assert "| attention=linear | completed | VisionTransformer | linear | none | mnist | 50,000 |" in text
    assert "| 55.00 | 49.00 | 3 |" in text
    assert "s/epoch" not in text, "columns without any value are left out"


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(UserError, match="no runs below"):
        make_report(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 1 and "is not a directory" in capsys.readouterr().err

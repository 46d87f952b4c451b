"""The report: a 2x2 CLI sweep gives four rows and the plots; run discovery, per-epoch history,
labels and failures read right from run directories written by hand."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_sweep import SWEEP_FAST, read_report, run_train_cli
from vit_rpe.report import PLOTS, find_run_dirs, labels, load_run, make_report, read_history
from vit_rpe.utils.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_of_a_2x2_cli_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    grid = ("-m", "model=vit,linear", "rpe=none,exp")
    done = run_train_cli(*grid, *SWEEP_FAST, "trainer.max_epochs=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0

    out = tmp_path / "report"
    report = subprocess.run(
        [sys.executable, "-m", "vit_rpe.report", str(sweep), "--out", str(out)],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr

    rows = read_report(out / "report.csv")
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


def write_run(path: Path, metrics: dict | None, history: list[dict] | None = None, overrides=(), **config):
    """A run directory as train() and Hydra leave it."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if history:
        (path / "csv").mkdir()
        with (path / "csv" / "metrics.csv").open("w", newline="") as file:
            writer = csv.DictWriter(
                file, fieldnames=["epoch", "step", "val/acc", "train/epoch_time", "test/acc"]
            )
            writer.writeheader()
            writer.writerows(history)
    return path


def net(attention="softmax", rpe="none"):
    backbone = {"_target_": "vit_rpe.models.VisionTransformer", "attention": attention, "rpe": rpe}
    return {"model": {"net": backbone}, "data": {"_target_": "vit_rpe.data.MNISTDataModule"}}


def test_history_is_per_epoch_from_the_csv_log(tmp_path):
    history = [
        {"epoch": 0, "step": 9, "val/acc": 0.5},
        {"epoch": 0, "step": 9, "train/epoch_time": 2.0},
        {"epoch": 1, "step": 19, "val/acc": 0.7},
        {"epoch": 1, "step": 19, "train/epoch_time": 3.0},
        {"epoch": 2, "step": 20, "test/acc": 0.69},  # test logs after the last epoch
    ]
    run = write_run(tmp_path / "r", {"val/acc_best": 0.7}, history)
    got = read_history(run / "csv" / "metrics.csv")
    assert got["val/acc"] == [(0, 0.5), (1, 0.7)]
    assert got["train/epoch_time"] == [(0, 2.0), (1, 3.0)]
    assert got["test/acc"] == [(2, 0.69)]


def test_runs_are_found_anywhere_below_but_not_inside_run_files(tmp_path):
    a = write_run(tmp_path / "train" / "multiruns" / "s1" / "10", {"val/acc_best": 0.1}, **net())
    b = write_run(tmp_path / "train" / "multiruns" / "s1" / "2", {"val/acc_best": 0.2}, **net())
    c = write_run(tmp_path / "train" / "runs" / "r1", None, **net())  # still running, or killed
    (c / "wandb" / "offline-run-x" / "files").mkdir(parents=True)
    (c / "wandb" / "offline-run-x" / "files" / "config.yaml").write_text("{}")
    (c / "checkpoints").mkdir()
    assert find_run_dirs(tmp_path) == [b, a, c]  # job 2 before job 10
    assert load_run(c).status == "incomplete"


def test_failed_and_early_failed_runs(tmp_path):
    late = write_run(tmp_path / "0", {"status": "failed", "error": "ConfigError: bad"}, **net())
    early = tmp_path / "1"  # failed before train() wrote config.yaml: Hydra's copy tells what it was
    (early / ".hydra").mkdir(parents=True)
    (early / ".hydra" / "config.yaml").write_text(yaml.safe_dump(net("performer", "exp")))
    (early / "error.txt").write_text("Traceback (most recent call last):\n  ...\nDataError: no MNIST here\n")
    runs = [load_run(late), load_run(early)]
    assert [(r.status, r.error) for r in runs] == [
        ("failed", "ConfigError: bad"),
        ("failed", "DataError: no MNIST here"),
    ]
    make_report(tmp_path, plots=False)
    rows = read_report(tmp_path / "report" / "report.csv")
    described = [(r["attention"], r["rpe"], r["data"]) for r in rows]
    assert described == [("softmax", "none", "mnist"), ("performer", "exp", "mnist")]


def test_labels_name_what_differs(tmp_path):
    runs = [
        load_run(
            write_run(tmp_path / str(i), {}, overrides=[f"model.optimizer.lr={lr}", "trainer=cpu"], **net())
        )
        for i, lr in enumerate((0.000123456, 0.002))
    ]
    assert labels(runs, tmp_path) == ["lr=0.000123", "lr=0.002"]
    plain = [load_run(write_run(tmp_path / f"p{a}", {}, **net(a))) for a in ("softmax", "linear")]
    assert labels(plain, tmp_path) == ["attention=softmax", "attention=linear"]
    same = [load_run(write_run(tmp_path / f"s{i}", {}, **net())) for i in range(2)]
    assert labels(same, tmp_path) == ["s0", "s1"]


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
    from vit_rpe.report import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 1 and "is not a directory" in capsys.readouterr().err

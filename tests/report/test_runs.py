"""Reading run directories: discovery, per-epoch history, failures, configs of early failures."""

from __future__ import annotations

import yaml

from tests.report.helpers import net, read_csv, write_run
from vit_rpe.report import find_run_dirs, load_run, make_report, read_history


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
    rows = read_csv(tmp_path / "report" / "report.csv")
    described = [(r["attention"], r["rpe"], r["data"]) for r in rows]
    assert described == [("softmax", "none", "mnist"), ("performer", "exp", "mnist")]

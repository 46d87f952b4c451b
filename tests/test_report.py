"""The report: a 2x2 CLI sweep gives four rows and the plots; run discovery, per-epoch history,
labels and failures read right from run directories written by hand."""

from __future__ import annotations

import csv
import json
import math
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


# Seed groups: runs that differ only in their seed are one result, reported as mean ± sample std.


def study_config(run_dir: Path, seed: int, lr: float = 1e-3, rpe: str = "none", **top) -> dict:
    """A resolved config.yaml as train() writes it: paths inside the run, seeds copied from ``seed``."""
    return {
        "task_name": "study",
        "tags": ["study"],
        "seed": seed,
        "ckpt_path": None,
        "resume_dir": None,
        "data": {"_target_": "vit_rpe.data.MNISTDataModule", "data_dir": "data/mnist", "seed": seed},
        "model": {
            "net": {"_target_": "vit_rpe.models.VisionTransformer", "attention": "softmax", "rpe": rpe},
            "optimizer": {"lr": lr},
        },
        "rpe": {"family": rpe},
        "trainer": {"default_root_dir": str(run_dir), "max_epochs": 3},
        "logger": {"csv": {"save_dir": str(run_dir)}},
        "callbacks": {"last_checkpoint": {"dirpath": f"{run_dir}/checkpoints"}, "step_seed": {"seed": seed}},
        "paths": {"root_dir": ".", "data_dir": "data", "log_dir": "outputs", "output_dir": str(run_dir)},
        **top,
    }


def write_study_run(path: Path, metrics: dict | None, seed: int, history=None, **config):
    overrides = [f"rpe={config.get('rpe', 'none')}", f"model.optimizer.lr={config.get('lr', 1e-3)}"]
    return write_run(
        path, metrics, history, [*overrides, f"seed={seed}"], **study_config(path, seed, **config)
    )


def test_what_differs_only_in_seed(tmp_path):
    """Seeds, paths, run names and resuming are not part of what a run is; anything else is."""
    from vit_rpe.report import group_runs

    sweeps = tmp_path / "outputs" / "study" / "multiruns"
    first = sweeps / "2026-01-01_10-00-00-000001" / "0"
    other_day = sweeps / "2026-01-02_09-30-00-123456" / "7"
    resumed = tmp_path / "outputs" / "train" / "runs" / "2026-01-03_08-00-00-000000"
    write_run(first, {}, **study_config(first, seed=1))
    write_run(other_day, {}, **study_config(other_day, seed=2, task_name="again", tags=["again"]))
    resumed_config = study_config(resumed, seed=3, resume_dir=str(resumed), ckpt_path="last")
    resumed_config["paths"]["data_dir"] = "/elsewhere"  # data.data_dir is what the run read
    write_run(resumed, {}, **resumed_config)

    other_lr = tmp_path / "lr"
    write_run(other_lr, {}, **study_config(other_lr, seed=1, lr=2e-3))
    other_data = tmp_path / "data"
    config = study_config(other_data, seed=2)
    config["data"]["data_dir"] = "data/fashion_mnist"
    write_run(other_data, {}, **config)
    split_only = tmp_path / "split"  # the same seed, another validation split: a seed too
    config = study_config(split_only, seed=1)
    config["data"]["seed"] = 7
    write_run(split_only, {}, **config)

    groups = group_runs([load_run(d) for d in find_run_dirs(tmp_path)])
    assert sorted(sorted(run.dir.name for run in group.runs) for group in groups) == [
        ["0", "2026-01-03_08-00-00-000000", "7", "split"],
        ["data"],
        ["lr"],
    ]


def test_seed_groups_report_mean_sample_std_and_n(tmp_path):
    sweep = tmp_path / "sweep"
    # rpe=none, seeds 1-3 completed, seed 4 failed: test acc 0.70, 0.74, 0.75 -> mean 0.73,
    # sample std sqrt((0.03² + 0.01² + 0.02²) / 2) = sqrt(0.0007); val best 0.80, 0.82, 0.84 -> 0.82 ± 0.02;
    # seconds per epoch 10, 12, 17 -> 13 ± sqrt(26 / 2).
    for job, (test, val, seconds) in enumerate(((0.70, 0.80, 10), (0.74, 0.82, 12), (0.75, 0.84, 17))):
        metrics = {"test/acc": test, "val/acc_best": val, "seconds_per_epoch": seconds, "params": 1000}
        write_study_run(sweep / str(job), {**metrics, "epochs": 3}, seed=job + 1)
    write_study_run(sweep / "3", {"status": "failed", "error": "RuntimeError: NaN loss"}, seed=4)
    # rpe=exp, seeds 1-2: 0.60 and 0.70 -> 0.65 ± 0.1 / sqrt(2); test top-5 only in one of them.
    write_study_run(sweep / "4", {"test/acc": 0.60, "test/acc_top5": 0.9, "params": 1016}, seed=1, rpe="exp")
    write_study_run(sweep / "5", {"test/acc": 0.70, "params": 1016}, seed=2, rpe="exp")
    # another learning rate, one seed: a single run stays as it is.
    write_study_run(sweep / "6", {"test/acc": 0.5, "val/acc_best": 0.55, "params": 1000}, seed=1, lr=2e-3)

    report = make_report(sweep, tmp_path / "out", plots=False)
    rows = read_report(tmp_path / "out" / "report.csv")
    assert [r["label"] for r in rows] == [
        "rpe=none, lr=0.001",
        "rpe=exp, lr=0.001",
        "rpe=none, lr=0.002",
    ]
    none, exp, single = rows
    assert (none["seeds"], none["n"], none["failed"]) == ("1;2;3;4", "3", "1")
    assert none["status"] == "3 completed, 1 failed" and none["error"] == "RuntimeError: NaN loss"
    assert none["run"] == "0;1;2;3"
    assert float(none["test_acc"]) == pytest.approx(0.73)
    assert float(none["test_acc_std"]) == pytest.approx(math.sqrt(0.0007))
    assert float(none["val_acc_best"]) == pytest.approx(0.82)
    assert float(none["val_acc_best_std"]) == pytest.approx(0.02)
    assert float(none["sec_per_epoch"]) == pytest.approx(13)
    assert float(none["sec_per_epoch_std"]) == pytest.approx(math.sqrt(13))
    assert (none["params"], none["params_std"], none["params_n"]) == ("1000", "0.0", "3")

    assert (exp["n"], exp["failed"], exp["status"]) == ("2", "0", "completed")
    assert float(exp["test_acc"]) == pytest.approx(0.65)
    assert float(exp["test_acc_std"]) == pytest.approx(0.1 / math.sqrt(2))
    assert (exp["test_acc_top5"], exp["test_acc_top5_std"], exp["test_acc_top5_n"]) == ("0.9", "", "1")

    assert (single["run"], single["seeds"], single["n"], single["status"]) == ("6", "1", "1", "completed")
    assert (single["test_acc"], single["test_acc_std"]) == ("0.5", "")

    text = report.read_text()
    assert "7 runs below" in text and "3 seed groups" in text and "sample standard deviation" in text
    assert "| rpe=none, lr=0.001 | 3 completed, 1 failed |" in text
    assert "| 3 | 1,000 | 82.00 ± 2.00 | 73.00 ± 2.65 | - | 3 | 13 ± 3.6 |" in text
    assert "| 2 | 1,016 | - | 65.00 ± 7.07 | 90.00 (n=1) |" in text
    assert "| rpe=none, lr=0.002 | completed |" in text and "| 1 | 1,000 | 55.00 | 50.00 | - |" in text
    # every run is still listed below the groups, with its seed
    runs = read_report(tmp_path / "out" / "runs.csv")
    assert [(r["run"], r["seed"], r["status"]) for r in runs][:4] == [
        ("0", "1", "completed"),
        ("1", "2", "completed"),
        ("2", "3", "completed"),
        ("3", "4", "failed"),
    ]
    assert "## Runs" in text and "| rpe=none, lr=0.001, seed=4 | failed |" in text


def test_a_run_that_failed_before_its_config_was_resolved_joins_its_group(tmp_path):
    """Only Hydra's composed copy (interpolations and all) says what such a run was."""
    for job in (0, 1):
        write_study_run(tmp_path / str(job), {"test/acc": 0.7 + 0.1 * job}, seed=job + 1)
    early = tmp_path / "2"
    composed = study_config(early, seed=3)
    composed["data"].update(seed="${seed}", data_dir="${paths.data_dir}/mnist")
    composed["model"]["net"]["rpe"] = "${rpe.family}"
    composed["trainer"]["default_root_dir"] = "${paths.output_dir}"
    composed["logger"]["csv"]["save_dir"] = "${paths.output_dir}"
    composed["callbacks"]["last_checkpoint"]["dirpath"] = "${paths.output_dir}/checkpoints"
    composed["callbacks"]["step_seed"]["seed"] = "${seed}"
    composed["paths"]["output_dir"] = "${hydra:runtime.output_dir}"
    (early / ".hydra").mkdir(parents=True)
    (early / ".hydra" / "config.yaml").write_text(yaml.safe_dump(composed))
    (early / "error.txt").write_text("Traceback (most recent call last):\nDataError: no MNIST here\n")

    run = load_run(early)
    assert run.config["model"]["net"]["rpe"] == "none" and run.config["data"]["seed"] == 3
    make_report(tmp_path, tmp_path / "out", plots=False)
    (row,) = read_report(tmp_path / "out" / "report.csv")
    assert (row["status"], row["n"], row["failed"], row["rpe"]) == ("2 completed, 1 failed", "2", "1", "none")
    assert float(row["test_acc"]) == pytest.approx(0.75)


def test_curves_of_a_group_are_per_epoch_mean_and_std(tmp_path):
    from vit_rpe.report import epoch_stats, group_runs

    curves = ([0.5, 0.7], [0.6, 0.9], [0.7])  # the third run stopped early
    for job, values in enumerate(curves):
        history = [{"epoch": e, "step": e, "val/acc": v} for e, v in enumerate(values)]
        write_study_run(tmp_path / str(job), {"val/acc_best": max(values)}, seed=job, history=history)
    (group,) = group_runs([load_run(d) for d in find_run_dirs(tmp_path)])
    stats = epoch_stats([dict(run.history["val/acc"]) for run in group.completed])
    assert list(stats) == [0, 1]
    assert (stats[0].mean, stats[0].std, stats[0].n) == (pytest.approx(0.6), pytest.approx(0.1), 3)
    assert (stats[1].mean, stats[1].std, stats[1].n) == (pytest.approx(0.8), pytest.approx(0.02**0.5), 2)
    make_report(tmp_path, tmp_path / "out")  # the plots draw the group's mean with its error bars
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(PLOTS)
    (row,) = read_report(tmp_path / "out" / "report.csv")
    assert row["label"] == "0, 1, 2", "a lone group is named by its runs"

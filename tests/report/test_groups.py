"""Seed groups: runs that differ only in their seed are one result, reported as mean ± sample std."""

from __future__ import annotations

import math

import pytest
import yaml

from tests.report.helpers import read_csv, study_config, write_run, write_study_run
from vit_rpe.report import epoch_stats, find_run_dirs, group_runs, load_run, make_report
from vit_rpe.report.plots import PLOTS


def test_what_differs_only_in_seed(tmp_path):
    """Seeds, paths, run names and resuming are not part of what a run is; anything else is."""

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
    rows = read_csv(tmp_path / "out" / "report.csv")
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
    runs = read_csv(tmp_path / "out" / "runs.csv")
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
    (row,) = read_csv(tmp_path / "out" / "report.csv")
    assert (row["status"], row["n"], row["failed"], row["rpe"]) == ("2 completed, 1 failed", "2", "1", "none")
    assert float(row["test_acc"]) == pytest.approx(0.75)


def test_curves_of_a_group_are_per_epoch_mean_and_std(tmp_path):

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
    (row,) = read_csv(tmp_path / "out" / "report.csv")
    assert row["label"] == "0, 1, 2", "a lone group is named by its runs"

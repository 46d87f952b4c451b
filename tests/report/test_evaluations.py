"""Evaluations of checkpoints (``vit_rpe.eval``) are their own rows, named by the run that wrote
the checkpoint and described by its model; a folder of single runs is labelled by what differs."""

from __future__ import annotations

import pytest

from tests.report.helpers import net, read_csv, write_eval_run, write_run
from vit_rpe.report import make_report


def test_two_evaluations_of_a_training_run_are_two_rows_named_by_it(tmp_path):
    outputs = tmp_path / "outputs"
    train = outputs / "quickstart" / "runs" / "2026-01-01_10-00-00-000000"
    metrics = {"test/acc": 0.95, "val/acc_best": 0.96, "params": 302_314, "epochs": 40}
    write_run(train, metrics, overrides=["experiment=quickstart"], **net("performer", "exp"))
    relative_ckpt = "outputs/quickstart/runs/2026-01-01_10-00-00-000000/checkpoints"  # as typed in tmp_path
    write_eval_run(outputs / "eval" / "runs" / "a", f"{relative_ckpt}/epoch_039.ckpt", {"test/acc": 0.9546})
    write_eval_run(outputs / "eval" / "runs" / "b", f"{train}/checkpoints/last.ckpt", {"test/acc": 0.9598})

    make_report(outputs, tmp_path / "out", plots=False)
    rows = read_csv(tmp_path / "out" / "report.csv")
    assert [(r["label"], r["n"], r["test_acc"]) for r in rows] == [
        ("eval of quickstart/runs/2026-01-01_10-00-00-000000 (epoch_039.ckpt)", "1", "0.9546"),
        ("eval of quickstart/runs/2026-01-01_10-00-00-000000 (last.ckpt)", "1", "0.9598"),
        ("quickstart/runs/2026-01-01_10-00-00-000000", "1", "0.95"),
    ]
    for row in rows:
        assert (row["model"], row["attention"], row["rpe"], row["params"]) == (
            "VisionTransformer", "performer", "exp", "302314",
        )  # fmt: skip
    assert [r["data"] for r in rows] == ["digits", "digits", "mnist"]  # each run's own data
    assert rows[0]["val_acc_best"] == "", "an evaluation did not select a checkpoint on validation"


def test_an_evaluation_finds_its_training_run_outside_the_folder(tmp_path):
    train = tmp_path / "outputs" / "train" / "runs" / "r1"
    write_run(train, {"params": 1000}, **net("linear"))
    evals = tmp_path / "outputs" / "eval"
    ckpt = "outputs/train/runs/r1/checkpoints/last.ckpt"  # relative to the root the eval ran in
    write_eval_run(evals / "runs" / "x", ckpt, {"test/acc": 0.5}, root_dir=str(tmp_path))
    write_eval_run(evals / "runs" / "y", "elsewhere/checkpoints/gone.ckpt", {"test/acc": 0.25})

    make_report(evals, tmp_path / "out", plots=False)
    rows = read_csv(tmp_path / "out" / "report.csv")
    assert [(r["label"], r["attention"], r["params"]) for r in rows] == [
        (f"eval of {train} (last.ckpt)", "linear", "1000"),
        ("eval of elsewhere/checkpoints/gone.ckpt", "", ""),
    ]


def test_seeded_evaluations_of_one_checkpoint_are_one_group(tmp_path):
    train = tmp_path / "train"
    write_run(train, {"params": 10}, **net())
    for seed, acc in ((1, 0.5), (2, 0.7)):
        write_eval_run(
            tmp_path / f"eval{seed}", f"{train}/checkpoints/last.ckpt", {"test/acc": acc}, seed=seed
        )
    make_report(tmp_path, tmp_path / "out", plots=False)
    evals, _ = read_csv(tmp_path / "out" / "report.csv")
    assert (evals["n"], evals["seeds"], evals["label"]) == ("2", "1;2", "eval of train (last.ckpt)")
    assert float(evals["test_acc"]) == pytest.approx(0.6)


def test_single_runs_are_labelled_by_the_overrides_they_were_given(tmp_path):
    given = [
        ["experiment=quickstart"],
        ["experiment=quickstart", "model=linear"],
        ["experiment=quickstart", "rpe=exp", "trainer.max_epochs=5"],
        [],
    ]
    for i, overrides in enumerate(given):
        config = {**net(), "trainer": {"max_epochs": i}}  # each a config of its own
        write_run(tmp_path / f"r{i}", {"test/acc": 0.5}, overrides=overrides, **config)
    make_report(tmp_path, tmp_path / "out", plots=False)
    assert [r["label"] for r in read_csv(tmp_path / "out" / "report.csv")] == [
        "experiment=quickstart",
        "experiment=quickstart, model=linear",
        "experiment=quickstart, rpe=exp, max_epochs=5",
        "defaults",
    ]


def test_failed_completed_and_prediction_runs(tmp_path):
    failed = write_run(tmp_path / "a", None, overrides=["model.net.patch_size=3"], **net("linear"))
    (failed / "error.txt").write_text("Traceback ...\nConfigError: patch_size 3 does not divide 8\n")
    resumed = write_run(tmp_path / "b", {"test/acc": 0.5}, overrides=["model.net.patch_size=2"], **net())
    (resumed / "error.txt").write_text("RuntimeError: out of memory\n")  # the first attempt's
    write_run(tmp_path / "p", None, images="photos/*.png", ckpt_path="b/checkpoints/last.ckpt")  # predict
    make_report(tmp_path, tmp_path / "out", plots=False)
    rows = read_csv(tmp_path / "out" / "report.csv")
    assert [(r["label"], r["status"], r["error"]) for r in rows] == [
        ("patch_size=3", "failed", "ConfigError: patch_size 3 does not divide 8"),
        ("patch_size=2", "completed", ""),
    ]


def test_a_failed_evaluation_says_failed_and_names_its_checkpoint(tmp_path):
    run = write_eval_run(tmp_path / "e", "nosuch.ckpt", None)
    (run / "error.txt").write_text("Traceback ...\nCheckpointError: checkpoint nosuch.ckpt does not exist\n")
    make_report(tmp_path, tmp_path / "out", plots=False)
    (row,) = read_csv(tmp_path / "out" / "report.csv")
    assert (row["label"], row["status"]) == ("eval of nosuch.ckpt", "failed")
    assert row["error"] == "CheckpointError: checkpoint nosuch.ckpt does not exist"

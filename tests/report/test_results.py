"""What a user compares after training: macro-F1 and the worst classes per group, cost per image
(parameters, GFLOPs, inference speed), data efficiency and accuracy at other test image sizes."""

from __future__ import annotations

import math

import pytest

from tests.report.helpers import (
    PNG_MAGIC,
    read_csv,
    study_config,
    write_per_class,
    write_resolution_evals,
    write_run,
    write_study_run,
)
from vit_rpe.report import PLOTS, make_report
from vit_rpe.report.plots import COMPARISONS


def test_macro_f1_worst_classes_and_cost_per_group(tmp_path):
    sweep = tmp_path / "sweep"
    # softmax, two seeds: recall cat 0.4/0.5, dog 0.6/0.6, bird 0.9/0.7, ship 0.95/0.95, frog 0.5/0.8.
    recalls = (
        {"cat": 0.4, "dog": 0.6, "bird": 0.9, "ship": 0.95, "frog": 0.5, "empty": None},
        {"cat": 0.5, "dog": 0.6, "bird": 0.7, "ship": 0.95, "frog": 0.8, "empty": None},
    )
    for job, (f1, speed, recall) in enumerate(zip((0.60, 0.70), (1000.0, 1200.0), recalls)):
        metrics = {"test/acc": 0.7, "test/macro_f1": f1, "params": 5000, "gflops_per_image": 0.25}
        run = write_study_run(sweep / str(job), {**metrics, "infer_images_per_sec": speed}, seed=job + 1)
        write_per_class(run, recall)
    # exp: one seed, an old run without the new keys and files
    write_study_run(sweep / "2", {"test/acc": 0.6, "params": 5016}, seed=1, rpe="exp")

    report = make_report(sweep, tmp_path / "out")
    softmax, old = read_csv(tmp_path / "out" / "report.csv")
    assert float(softmax["test_macro_f1"]) == pytest.approx(0.65)
    assert float(softmax["test_macro_f1_std"]) == pytest.approx(0.1 / math.sqrt(2))
    assert (softmax["gflops_per_image"], softmax["params"]) == ("0.25", "5000")
    assert float(softmax["infer_images_per_sec"]) == pytest.approx(1100)
    assert float(softmax["infer_images_per_sec_std"]) == pytest.approx(200 / math.sqrt(2))
    # mean recall: cat 0.45, dog 0.60, frog 0.65 (bird 0.80, ship 0.95; "empty" had no test images)
    assert softmax["worst_classes"] == "cat 45.0%, dog 60.0%, frog 65.0%"
    assert (old["test_macro_f1"], old["gflops_per_image"], old["worst_classes"]) == ("", "", "")
    runs = read_csv(tmp_path / "out" / "runs.csv")
    assert runs[0]["worst_classes"] == "cat 40.0%, frog 50.0%, dog 60.0%"

    text = report.read_text()
    assert "| params | GFLOPs/image | test top-1 % | test macro-F1 % | inference images/s |" in text
    assert "| 2 | 5,000 | 0.25 | 70.00 ± 0.00 | 65.00 ± 7.07 |" in text
    assert "| 1,100 ± 141 | cat 45.0%, dog 60.0%, frog 65.0% |" in text
    assert "| 1 | 5,016 | - | 60.00 | - | - | - |" in text, "an old run's missing numbers are -"
    # only one group has GFLOPs and inference speed: nothing to compare them with
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(PLOTS)


def test_plots_against_gflops_and_train_fraction_when_a_sweep_varies_them(tmp_path):
    for job, (rpe, fraction, gflops) in enumerate(
        [("none", 0.1, 0.2), ("none", 0.5, 0.2), ("none", 1.0, 0.2), ("exp", 0.1, 0.3), ("exp", 1.0, 0.3)]
    ):
        for seed in (1, 2):
            run_dir = tmp_path / f"{job}_{seed}"
            config = study_config(run_dir, seed=seed, rpe=rpe)
            config["data"]["train_fraction"] = fraction
            overrides = [f"rpe={rpe}", f"data.train_fraction={fraction}", f"seed={seed}"]
            metrics = {"test/acc": fraction / 2 + seed / 100, "gflops_per_image": gflops}
            metrics["infer_images_per_sec"] = 1 / gflops + seed
            write_run(run_dir, metrics, None, overrides, **config)
    make_report(tmp_path, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "report.csv")
    assert [r["label"] for r in rows][:2] == ["rpe=none, train_fraction=0.1", "rpe=none, train_fraction=0.5"]
    assert [r["n"] for r in rows] == ["2"] * 5
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    extra = ["acc_vs_gflops.png", "acc_vs_infer_speed.png", "acc_vs_train_fraction.png"]
    assert written == sorted([*PLOTS, *extra]), "no resolution plot without evals/<px>px"
    for name in extra:
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG_MAGIC)


def test_accuracy_against_test_image_size(tmp_path):
    sweep = tmp_path / "sweep"
    # exp, two seeds, trained at 28 px: 28 -> 0.90/0.92, 36 -> 0.80/0.84, 44 -> 0.60/0.70
    for job, accuracy in enumerate(({28: 0.90, 36: 0.80, 44: 0.60}, {28: 0.92, 36: 0.84, 44: 0.70})):
        run = write_study_run(sweep / str(job), {"test/acc": accuracy[28]}, seed=job + 1, rpe="exp")
        write_resolution_evals(run, accuracy)
    run = write_study_run(sweep / "2", {"test/acc": 0.9}, seed=1, rpe="none")
    write_resolution_evals(run, {28: 0.9, 36: 0.5})  # a group evaluated at fewer sizes

    report = make_report(sweep, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "resolution.csv")
    got = [(r["label"], r["image_size"], float(r["test_acc"]), r["n"]) for r in rows]
    assert got == [
        ("rpe=exp", "28", pytest.approx(0.91), "2"),
        ("rpe=exp", "36", pytest.approx(0.82), "2"),
        ("rpe=exp", "44", pytest.approx(0.65), "2"),
        ("rpe=none", "28", 0.9, "1"),
        ("rpe=none", "36", 0.5, "1"),
    ]
    assert float(rows[2]["test_acc_std"]) == pytest.approx(0.1 / math.sqrt(2))
    text = report.read_text()
    assert "| run | 28 px | 36 px | 44 px |" in text
    assert "| rpe=exp | 91.00 ± 1.41 | 82.00 ± 2.83 | 65.00 ± 7.07 |" in text
    assert "| rpe=none | 90.00 | 50.00 | - |" in text
    assert (tmp_path / "out" / "acc_vs_resolution.png").read_bytes().startswith(PNG_MAGIC)
    assert "3 runs below" in text, "evals/<px>px are part of their run, not runs of their own"


def test_comparison_plots_have_titles():
    assert set(COMPARISONS) == {
        "acc_vs_gflops.png", "acc_vs_infer_speed.png", "acc_vs_train_fraction.png", "acc_vs_resolution.png",
    }  # fmt: skip

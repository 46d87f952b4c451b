"""Sweeps through the real CLI: a failed job is recorded and the others go on; the Optuna search
finds and records its best parameters; single runs still stop on errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST, compose_config, run_train_main
from tests.helpers import SWEEP_FAST, read_report, run_train_cli
from vit_rpe.train import train
from vit_rpe.utils.run import in_multirun, run_job


def test_a_failed_job_is_recorded_the_sweep_goes_on_and_exits_with_the_failures(
    tmp_path, monkeypatch, capsys
):
    sweep = tmp_path / "sweep"
    args = ("-m", "model.net.patch_size=3,2", *SWEEP_FAST, f"hydra.sweep.dir={sweep}")
    assert run_train_main(*args, monkeypatch=monkeypatch) == 1, "the exit status counts the failed jobs"
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith(f"sweep {sweep}: 1 of 2 jobs failed: 0 (model.net.patch_size=3")
    assert "ConfigError: patch_size 3 does not divide" in summary

    failed, completed = sweep / "0", sweep / "1"
    record = json.loads((failed / "metrics.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("ConfigError: patch_size 3 does not divide")
    traceback = (failed / "error.txt").read_text()
    assert "Traceback" in traceback and "ConfigError" in traceback
    assert "val/acc_best" in json.loads((completed / "metrics.json").read_text())

    from vit_rpe.report import make_report

    make_report(sweep, tmp_path / "report", plots=False)
    rows = read_report(tmp_path / "report" / "report.csv")
    assert [(r["label"], r["status"]) for r in rows] == [
        ("patch_size=3", "failed"),
        ("patch_size=2", "completed"),
    ]
    assert "patch_size 3 does not divide" in rows[0]["error"] and rows[0]["val_acc_best"] == ""
    job = json.loads((completed / "metrics.json").read_text())
    assert float(rows[1]["val_acc_best"]) == pytest.approx(job["val/acc_best"])


def test_optuna_search_runs_its_trials_and_records_the_best(tmp_path, monkeypatch, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the sweep extra")
    sweep = tmp_path / "search"
    code = run_train_main(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *(o for o in SWEEP_FAST if not o.startswith("model.net.depth=")),  # a CLI value would fix it
        f"hydra.sweep.dir={sweep}",
        monkeypatch=monkeypatch,
    )
    assert code == 0  # no trial failed
    assert "3 jobs, none failed" in capsys.readouterr().out
    trials = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in trials] == ["0", "1", "2"]

    scores = {}
    for trial in trials:
        overrides = dict(
            o.split("=", 1) for o in yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        )
        config = yaml.safe_load((trial / "config.yaml").read_text())
        assert 1e-4 <= config["model"]["optimizer"]["lr"] <= 5e-3
        assert config["model"]["net"]["depth"] in (2, 4, 6)
        assert config["model"]["net"]["rpe"] == overrides["rpe"]
        assert str(config["model"]["net"]["depth"]) == overrides["model.net.depth"]
        scores[trial.name] = (json.loads((trial / "metrics.json").read_text())["val/acc_best"], overrides)

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best_score, best_overrides = max(scores.values(), key=lambda s: s[0])
    assert results["best_value"] == pytest.approx(best_score)
    assert set(results["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.net.depth",
        "rpe",
    }
    assert str(results["best_params"]["rpe"]) == best_overrides["rpe"]

    from vit_rpe.report import make_report

    text = make_report(sweep, plots=False).read_text()
    assert "Optuna: best parameters" in text and "best_value" in text


def set_hydra_mode(mode: str, output_dir: Path, *overrides: str):
    """A composed config and a HydraConfig as Hydra sets them up for a job in ``mode``."""
    hydra = (f"hydra.mode={mode}", f"hydra.runtime.output_dir={output_dir}")
    return compose_config("train", (*FAST, *overrides, *hydra), output_dir)


def test_sweep_jobs_return_nothing_on_failure_single_runs_raise(tmp_path):
    cfg = set_hydra_mode("MULTIRUN", tmp_path / "job", "model.net.patch_size=3")
    assert in_multirun()
    assert run_job(train, cfg) is None
    assert json.loads((tmp_path / "job" / "metrics.json").read_text())["status"] == "failed"

    def broken(_):
        raise RuntimeError("a bug, not a user error")

    cfg = set_hydra_mode("RUN", tmp_path / "single", "model.net.patch_size=3")
    assert not in_multirun()
    with pytest.raises(SystemExit) as exit_info:  # a user error: clean exit 1, error.txt but no metrics
        run_job(train, cfg)
    assert exit_info.value.code == 1 and not (tmp_path / "single" / "metrics.json").exists()
    with pytest.raises(RuntimeError, match="a bug"):
        run_job(broken, cfg)


def test_main_returns_nan_for_a_failed_sweep_job(tmp_path):
    """What the sweepers see: Optuna marks a NaN trial failed and samples on."""
    from vit_rpe import train as train_module

    cfg = set_hydra_mode("MULTIRUN", tmp_path / "job", "model.net.patch_size=3")
    value = train_module.hydra_main(cfg)  # hydra.main passes a given config straight to the function
    assert math.isnan(value)


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra")
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


@pytest.mark.slow
def test_submitit_local_launcher_runs_and_records_jobs(tmp_path):
    """The SLURM launcher's local twin: each job in its own process, failures recorded the same way."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra")
    sweep = tmp_path / "sweep"
    launcher = ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    done = run_train_cli(
        "-m", *launcher, "model.net.patch_size=3,2", *SWEEP_FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert done.returncode == 0
    statuses = [json.loads((sweep / job / "metrics.json").read_text()).get("status") for job in ("0", "1")]
    assert statuses == ["failed", None]
    assert (sweep / ".submitit").is_dir()

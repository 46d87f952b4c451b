"""Study experiments (conf/experiment/*_study.yaml): every arm of every study composes and builds
its model, its seeds make one group of the report, and a study runs end to end as one multirun
whose report has its seed groups."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_config, run_train_main
from tests.helpers import SWEEP_FAST, read_report
from vit_rpe.data.synthetic import write_mnist
from vit_rpe.report import Run, experiment_key, load_run, make_report

STUDIES = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*_study.yaml"))


def study_jobs(study: str, *cli: str, sweeps: tuple[str, ...] = ()) -> list[list[str]]:
    """The overrides of every job ``python -m vit_rpe.train -m experiment=<study> CLI SWEEPS``
    launches, expanded as Hydra's basic sweeper does (the study's own sweeper params, then the
    command line, whose ``SWEEPS`` such as ``seed=1,2`` replace the study's)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [f"experiment={study}", *cli], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.mode == RunMode.MULTIRUN, f"{study} must run as a multirun without -m"
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, f"experiment={study}", *cli, *sweeps])
    (jobs,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return jobs


def test_there_is_a_study_per_published_table():
    assert {"cifar10_attention_study", "tiny_imagenet_rpe_study", "mnist_rpe_study"} <= set(STUDIES)
    assert any("cpu" in study for study in STUDIES)


def arm_of(job: list[str]) -> tuple[str, ...]:
    """A job's overrides less its seed: the jobs of one arm differ only there."""
    return tuple(o for o in job if not o.startswith("seed="))


@pytest.mark.parametrize("study", STUDIES)
def test_every_arm_of_a_study_composes_builds_its_model_and_has_several_seeds(study, tmp_path):
    """One job an arm is composed and its model built (composing is most of the time: a study has
    up to 30 jobs); the first arm's seeds are all composed, and the report must group them."""
    jobs = study_jobs(study)
    arms: dict[tuple[str, ...], list[list[str]]] = {}
    for job in jobs:
        arms.setdefault(arm_of(job), []).append(job)
    keys = set()
    for index, arm_jobs in enumerate(arms.values()):
        seeds_keys = set()
        for overrides in arm_jobs if index == 0 else arm_jobs[:1]:
            cfg = compose_config("train", overrides, tmp_path / "job")
            OmegaConf.resolve(cfg)
            assert cfg.task_name == study and cfg.data.seed == cfg.seed
            # the report's seed groups: everything but seeds and paths
            seeds_keys.add(
                experiment_key(Run(tmp_path / "job", "completed", OmegaConf.to_container(cfg), {}, [], {}))
            )
        assert len(seeds_keys) == 1, "the seeds of an arm must be one group of the report"
        keys |= seeds_keys
        model = instantiate(cfg.model)
        data = cfg.data
        images = torch.zeros(1, data.in_chans, data.image_size, data.image_size)
        assert model.net(images).shape == (1, data.num_classes)
    assert len(keys) == len(arms) >= 3, "a study compares several arms, each its own group"
    assert all(len(arm_jobs) >= 2 for arm_jobs in arms.values()), "each arm with several seeds"
    assert all(len({o for o in job if o.startswith("seed=")}) == 1 for job in jobs)


def test_cifar10_study_rows_are_seed_003s_models(tmp_path):
    """VIT, VITL and VITX of seed 003: attention, tokens and parameters as its table states."""
    found = {}
    for overrides in study_jobs("cifar10_attention_study", "seed=1"):
        cfg = compose_config("train", overrides, tmp_path / "job")
        OmegaConf.resolve(cfg)
        net = instantiate(cfg.model).net
        variant = next(o.split("=", 1)[1] for o in overrides if o.startswith("variant="))
        params = sum(p.numel() for p in net.parameters())
        found[variant] = (
            cfg.model.net.attention,
            cfg.model.net.patch_embed,
            math.prod(net.grid_size),
            params,
        )
        assert (cfg.model.net.embed_dim, cfg.model.net.depth, cfg.model.net.num_heads) == (128, 4, 8)
        assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.model.optimizer.lr) == (40, 128, 1e-3)
        assert (cfg.data.randaugment, cfg.data.mixup, cfg.model.scheduler.warmup_epochs) == (None, 0, 4)
    assert {v: f[:3] for v, f in found.items()} == {
        "softmax_patch2": ("softmax", "linear", 256),
        "linear_patch1": ("linear", "linear", 1024),
        "linear_conv_stem": ("linear", "conv_stem", 1024),
    }
    # seed 003: 829,322 / 924,426 / 1,017,162 parameters; ours within 5% (its MLP head differs)
    for variant, published in (("softmax_patch2", 829_322), ("linear_patch1", 924_426)):
        assert found[variant][3] == pytest.approx(published, rel=0.05)


def test_a_study_runs_as_one_multirun_and_reports_its_seed_groups(tmp_path, monkeypatch):
    """The CPU study at tiny size, two of its RPEs and two of its seeds (the command line narrows
    the study's own sweep, as a user trying it would): every arm x seed a real job, the report one
    row per arm."""
    (study,) = [s for s in STUDIES if "cpu" in s]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (90, 28, 28)).astype(np.uint8)
    labels = np.arange(90) % 10
    folder = write_mnist(tmp_path / "mnist", images[:60], labels[:60], images[60:], labels[60:])
    sweep = tmp_path / "sweep"
    tiny = (f"data.data_dir={folder}", "data.val_size=20", "data.batch_size=16", "model.net.embed_dim=16")
    narrowed = ("rpe=none,rope", "seed=1,2")  # 8 jobs of the study's 18: 2 x 2 arms, 2 seeds each
    code = run_train_main(
        "-m",
        f"experiment={study}",
        *tiny,
        *narrowed,
        *SWEEP_FAST,
        f"hydra.sweep.dir={sweep}",
        monkeypatch=monkeypatch,
    )
    assert code == 0
    jobs = study_jobs(study, *tiny, *SWEEP_FAST, sweeps=narrowed)
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == sorted(
        str(i) for i in range(len(jobs))
    )

    report = make_report(sweep, tmp_path / "report", plots=False)
    rows = read_report(tmp_path / "report" / "report.csv")
    arms = len(jobs) // 2
    assert arms == 4 and len(rows) == arms
    assert {row["n"] for row in rows} == {"2"} and {r["failed"] for r in rows} == {"0"}
    assert [row["label"] for row in rows] == [
        f"model={m}, rpe={r}" for m in ("vit", "performer") for r in ("none", "rope")
    ]
    for row in rows:
        runs = [sweep / job for job in row["run"].split(";")]
        accuracies = [json.loads((run / "metrics.json").read_text())["test/acc"] for run in runs]
        assert float(row["test_acc"]) == pytest.approx(np.mean(accuracies))
        assert float(row["test_acc_std"]) == pytest.approx(np.std(accuracies, ddof=1))
        assert sorted(row["seeds"].split(";")) == ["1", "2"]
        assert len({experiment_key(load_run(run)) for run in runs}) == 1
    text = report.read_text()
    assert "## Seed groups" in text and text.count(" ± ") >= arms

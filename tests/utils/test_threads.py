"""CPU threads: the CPUs this process may use, OMP_NUM_THREADS when set, or the config's number;
idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from vit_rpe.utils import threads as threads_module
from vit_rpe.utils.threads import set_threads


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_default_is_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert set_threads(None) == 3 and torch.get_num_threads() == 3


def test_omp_num_threads_set_by_the_user_wins_over_the_cpus(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert set_threads(None) == 2 and torch.get_num_threads() == 2


def test_the_config_says_it_outright(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_threads(2) == 2 and torch.get_num_threads() == 2


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_idle_threads_sleep_unless_the_user_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import vit_rpe, os; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_a_run_takes_the_threads_of_its_config(train_config):
    from vit_rpe.build import build_run

    build_run(train_config("threads=2"))
    assert torch.get_num_threads() == 2
    build_run(train_config())  # threads: null -> OMP_NUM_THREADS=1 (conftest)
    assert torch.get_num_threads() == 1

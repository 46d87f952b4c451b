"""Shared fixtures: compose the real config tree and run jobs at tiny sizes, without network."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# Real MNIST files, for the tests that use them (skipped without): the folder $VIT_RPE_MNIST names,
# which `make test` sets to ../shared/data/mnist when that is there. Nothing outside the repo is
# read unless asked.
SHARED_MNIST = Path(os.environ["VIT_RPE_MNIST"]) if os.environ.get("VIT_RPE_MNIST") else None
NO_REAL_MNIST = "set VIT_RPE_MNIST to a folder of the real MNIST files (make test: ../shared/data/mnist)"
needs_real_mnist = pytest.mark.skipif(SHARED_MNIST is None or not SHARED_MNIST.is_dir(), reason=NO_REAL_MNIST)

# Caches the libraries (and our C kernel) would write under ~/.cache and ~/.config go to one
# temporary folder per test process: tests write only to tmp paths.
_CACHES = Path(tempfile.mkdtemp(prefix="vit_rpe_test_caches_"))
for variable in (
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "HF_HOME",
    "TORCH_HOME",
    "MPLCONFIGDIR",
    "WANDB_CACHE_DIR",
    "WANDB_CONFIG_DIR",
    "WANDB_DATA_DIR",
    "VIT_RPE_KERNEL_CACHE",
):
    os.environ.setdefault(variable, str(_CACHES / variable.lower()))

# One thread per test process: tests run in parallel (pytest-xdist) on small machines; runs built
# by the tests take the same (threads: null follows OMP_NUM_THREADS). torch, like everything heavy,
# is imported by the test modules, not here: pytest-xdist's controlling process loads this file too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Small, fast, quiet: CPU, no progress bar, a few batches.
FAST = (
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "model.net.embed_dim=32",
    "model.net.depth=1",
    "model.net.num_heads=2",
)
# With these the FAST model learns in its few steps (no warmup, a high lr, mean pooling), so a tiny
# run can assert a learning outcome; a patch size giving a 2x2 grid helps most.
LEARNS = ("model.optimizer.lr=1e-2", "model.scheduler.warmup_epochs=0", "model.net.pool=mean")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread in each worker, also where OMP_NUM_THREADS was already set otherwise."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _confusion_plots_only_where_tested(request, monkeypatch):
    """A run's confusion_matrix.png is half a second of matplotlib, a sixth of a tiny run: only the
    tests marked ``plots`` draw it (per_class.csv is always written)."""
    if request.node.get_closest_marker("plots") is None:
        from vit_rpe.callbacks import per_class

        monkeypatch.setattr(per_class, "plot_confusion_matrix", lambda confusion, names, path: None)


def compose_config(config_name: str, overrides, output_dir: Path, conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` (or another tree's) as the CLI would, with run files
    under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
        del cfg.hydra
    return cfg


def run_train_main(*args: str, monkeypatch) -> int:
    """The CLI's main in this process: ``python -m vit_rpe.train ARGS`` less the Python start-up
    (about 12 s of imports on two busy cores). Returns the exit code."""
    return run_main("vit_rpe.train", *args, monkeypatch=monkeypatch)


def run_main(module: str, *args: str, monkeypatch) -> int:
    """``python -m MODULE ARGS`` in this process, for an entry point whose ``main()`` is Hydra's."""
    main = importlib.import_module(module).main
    monkeypatch.setattr(sys, "argv", [module.replace(".", "/") + ".py", *args])
    # Find conf/ beside the file, as `python -m vit_rpe.train` does (an imported main looks for a module).
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")
    GlobalHydra.instance().clear()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        main()
    except SystemExit as exit_info:
        return exit_info.code or 0
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # the job's logging, as at the end of a process
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    return 0


@pytest.fixture
def train_config(tmp_path):
    """``train_config(*overrides, fast=True)`` -> a composed train config writing into tmp_path."""

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        return compose_config("train", (*(FAST if fast else ()), *overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def real_mnist_folder(tmp_path_factory):
    """Real MNIST digits in the real format: train = first 8,000 test images, test = the other 2,000."""
    if SHARED_MNIST is None or not SHARED_MNIST.is_dir():
        pytest.skip(NO_REAL_MNIST)
    from vit_rpe.data.mnist_subset import write_test_split

    return write_test_split(SHARED_MNIST, tmp_path_factory.mktemp("mnist"), train=8000)

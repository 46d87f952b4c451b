"""Weights & Biases for sweeps: one W&B run per job, grouped by sweep, offline when it must be.

``logger=wandb`` builds the logger with :func:`wandb_logger`. Without credentials or without a
network the run is written offline (``wandb sync <dir>`` uploads it later) instead of waiting for a
server or prompting for a key; an explicit ``WANDB_MODE`` always wins. Every job finishes its run
(``vit_rpe.utils.run.finish_wandb``), so the jobs of a multirun never merge into one W&B run.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger

from vit_rpe.utils.run import finish_wandb

log = logging.getLogger("vit_rpe.loggers")

DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def wandb_host() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)


def has_wandb_api_key(host: str | None = None) -> bool:
    """An API key in ``WANDB_API_KEY`` or in the netrc entry that ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    machine = urlsplit(host or wandb_host()).netloc
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(path).authenticators(machine)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def can_reach(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (DNS included)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    reached: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    # A thread, because name resolution ignores socket timeouts and can hang on a dead network.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached)


def choose_wandb_mode(offline: bool | None = None) -> tuple[str | None, str]:
    """The mode to start W&B in and why; None leaves the choice to ``WANDB_MODE``."""
    if os.environ.get("WANDB_MODE"):
        return None, f"WANDB_MODE={os.environ['WANDB_MODE']}"
    if offline:
        return "offline", "offline=true"
    if offline is None:
        if not has_wandb_api_key():
            return "offline", "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
        if not can_reach(wandb_host()):
            return "offline", f"{wandb_host()} cannot be reached"
    return "online", "an API key and a network"


def sweep_group() -> str | None:
    """The multirun's name (its sweep directory) for the jobs of a ``-m`` sweep; None otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def job_name(output_dir: str | Path) -> str:
    """A sweep job is named by its overrides (``model=vit,rpe=exp``), a single run by its directory."""
    from hydra.core.hydra_config import HydraConfig

    if sweep_group() is not None:
        job = HydraConfig.get().job
        return f"{job.num}: {job.override_dirname}" if job.override_dirname else str(job.num)
    return Path(output_dir).name


def git_state() -> dict[str, Any]:
    """The commit of the code that ran, and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    job_type: str | None = None,
    entity: str | None = None,
    notes: str | None = None,
    offline: bool | None = None,
    log_model: bool | str = False,
    **kwargs: Any,
) -> WandbLogger:
    """A Lightning WandbLogger for one job of this project.

    ``group`` defaults to the sweep's name in a multirun and ``name`` to the job's overrides (or the
    run directory). ``offline``: None chooses by credentials and network, True/False force it.
    ``log_model``: True logs the best and last checkpoints as artifacts, "all" every checkpoint.
    """
    finish_wandb()  # a run left open by an earlier job in this process must not swallow this one
    mode, reason = choose_wandb_mode(offline)
    if mode == "offline":
        log.warning("W&B runs offline: %s", reason)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    config = {"output_dir": str(save_dir), **git_state()}
    init: dict[str, Any] = dict(kwargs)
    if mode is not None:
        init["mode"] = mode
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name or job_name(save_dir),
        group=group or sweep_group(),
        tags=list(tags),
        job_type=job_type,
        entity=entity,
        notes=notes,
        log_model=log_model,
        config=config,
        **init,
    )

"""The end of a sweep (``-m``): one line naming the jobs that failed, and an exit status that says so.

A failed job records itself (``metrics.json`` with status failed, ``error.txt``, ``.hydra/``: see
``vit_rpe.utils.run.run_job``) and the sweep goes on; Hydra itself would then exit 0. The summary
reads the job directories, so it holds whatever launcher ran the jobs (local, joblib, SLURM).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback as HydraCallback  # not a Lightning callback
from omegaconf import DictConfig


def failed_jobs(sweep_dir: Path) -> tuple[int, list[tuple[Path, str]]]:
    """(number of jobs, [(job dir, error) of each failed one]) below ``sweep_dir``."""
    jobs = sorted(p.parent for p in sweep_dir.rglob("metrics.json"))
    failed = []
    for job in jobs:
        try:
            record = json.loads((job / "metrics.json").read_text())
        except ValueError:
            record = {"status": "failed", "error": "metrics.json is not readable"}
        if record.get("status") == "failed":
            failed.append((job, str(record.get("error", ""))))
    return len(jobs), failed


def job_name(job: Path, sweep_dir: Path) -> str:
    """The job's directory under the sweep and its overrides: ``0 (model.net.patch_size=3)``."""
    try:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        overrides = []
    name = str(job.relative_to(sweep_dir))
    return f"{name} ({' '.join(map(str, overrides))})" if overrides else name


class SweepSummary(HydraCallback):
    """After the last job of a sweep: print which jobs failed, and exit with their number
    (at most 125, under the statuses of signals) when any did."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        total, failed = failed_jobs(sweep_dir)
        if not failed:
            print(f"sweep {sweep_dir}: {total} jobs, none failed")
            return
        names = "; ".join(f"{job_name(job, sweep_dir)}: {error}" for job, error in failed)
        summary = f"sweep {sweep_dir}: {len(failed)} of {total} jobs failed: {names}"
        print(f"{summary} (tracebacks in <job>/error.txt)", file=sys.stderr)
        raise SystemExit(min(len(failed), 125))

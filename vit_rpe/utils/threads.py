"""How many CPU threads a run computes with: a default that holds up when runs share a machine.

torch's default is every core of the machine, whatever this process may use (a cgroup, taskset,
a SLURM allocation). The default here is the CPUs this process may use (``os.sched_getaffinity``),
or ``OMP_NUM_THREADS`` when the user set it; ``threads=<n>`` in the config says it outright.
Idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``, set in vit_rpe/__init__.py
before torch loads its OpenMP runtime): two runs on the same cores then share them instead of
burning each other's time (docs/benchmarks.md, Sharing a machine).
"""

from __future__ import annotations

import logging
import os

from vit_rpe.utils.errors import ConfigError

log = logging.getLogger("vit_rpe")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a number, else the usable CPUs."""
    try:
        return max(int(os.environ["OMP_NUM_THREADS"]), 1)
    except (KeyError, ValueError):
        return usable_cpus()


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads: ``threads``, or the default for ``null``. Returns the number."""
    import torch

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(
            f"threads={threads!r}: give a number of CPU threads (1 or more), or threads=null for the default"
        )
    count = threads or default_threads()
    torch.set_num_threads(count)
    if threads:
        source = "threads="
    else:
        source = "OMP_NUM_THREADS" if "OMP_NUM_THREADS" in os.environ else "the CPUs this process may use"
    log.info("CPU threads: %d (%s)", count, source)
    return count

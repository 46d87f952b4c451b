"""Compare runs: ``python -m vit_rpe.report <run, multirun or outputs dir> [--out DIR]``.

Finds every run below the path (``runs.py``), groups the runs that differ only in their seed
(``groups.py``), names them by what differs (``labels.py``) and writes the tables (``tables.py``:
``report.csv`` with mean ± sample std and n of every metric per group, ``runs.csv``, ``report.md``)
and plots with error bars (``plots.py``). ``cli.py`` puts them together.
"""

from vit_rpe.report.cli import main, make_report
from vit_rpe.report.groups import Group, Stat, epoch_stats, experiment_key, group_runs, stat
from vit_rpe.report.labels import labels
from vit_rpe.report.plots import PLOTS
from vit_rpe.report.runs import Run, find_run_dirs, load_run, read_history

__all__ = [
    "PLOTS", "Group", "Run", "Stat", "epoch_stats", "experiment_key", "find_run_dirs", "group_runs",
    "labels", "load_run", "main", "make_report", "read_history", "stat",
]  # fmt: skip

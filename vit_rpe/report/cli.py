"""Compare runs: every run below a folder, grouped by seed, written as tables and plots.

``python -m vit_rpe.report <run, multirun or outputs dir> [--out DIR] [--no-plots]``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vit_rpe.report.groups import group_runs
from vit_rpe.report.labels import labels
from vit_rpe.report.plots import TITLES, plot_all
from vit_rpe.report.runs import Run, find_run_dirs, link_evaluations, load_run, read_yaml, relative
from vit_rpe.report.tables import (
    GROUP_COLUMNS,
    RESOLUTION_COLUMNS,
    RUN_COLUMNS,
    group_row,
    markdown_table,
    resolution_rows,
    resolution_table,
    run_row,
    write_csv,
)
from vit_rpe.utils.errors import UserError
from vit_rpe.utils.run import exit_on_user_error

STATUSES = ("completed", "failed", "incomplete")


def make_report(root: Path, out: Path | None = None, plots: bool = True) -> Path:
    """Write report.csv (seed groups), runs.csv, resolution.csv (if any), report.md and the plots
    for every run below ``root``. Returns report.md."""
    shown, root = Path(root), Path(root).resolve()  # the path as given goes into report.md
    runs = read_runs(root)
    out = Path(out).resolve() if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)

    run_rows = [run_row(run, label, root) for run, label in zip(runs, labels(runs, root))]
    row_of = {run.dir: row for run, row in zip(runs, run_rows)}
    groups = group_runs(runs)
    directories = [", ".join(relative(run.dir, root) for run in group.runs) for group in groups]
    names = labels([group.runs[0] for group in groups], root, seeds=False, fallback=directories)
    group_rows = [group_row(g, [row_of[run.dir] for run in g.runs], name) for g, name in zip(groups, names)]
    resolutions = resolution_rows(groups, names)
    write_csv(group_rows, out / "report.csv", GROUP_COLUMNS)
    write_csv(run_rows, out / "runs.csv", RUN_COLUMNS)
    if resolutions:
        write_csv(resolutions, out / "resolution.csv", RESOLUTION_COLUMNS)
    images = plot_all(groups, names, out) if plots else []

    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    statuses = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    summary = f"{plural(len(runs), 'run')} below `{shown}`: {statuses}"
    seeded = any(len(group.runs) > 1 for group in groups)
    table = markdown_table(group_rows, grouped=True) if seeded else markdown_table(run_rows)
    lines = [f"# Runs in {root.name}", ""]
    if seeded:
        lines += seed_group_section(summary, len(groups), table, markdown_table(run_rows))
    else:
        lines += [f"{summary}.", "", table, ""]
    if resolutions:
        lines += resolution_section(resolutions)
    lines += optuna_section(read_yaml(root / "optimization_results.yaml"))
    for image in images:
        lines += [f"![{TITLES[image]}]({image})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))

    print(table)
    tables = "report.csv, runs.csv, resolution.csv" if resolutions else "report.csv, runs.csv"
    beside = f"{tables} and {len(images)} plots beside it"
    print(f"\nreport: {report} ({plural(len(runs), 'run')} in {plural(len(groups), 'seed group')}; {beside})")
    return report


def read_runs(root: Path) -> list[Run]:
    """Every run below ``root`` (predictions are not results), evaluations linked to their runs."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: give a run, multirun or outputs directory")
    runs = [run for run in map(load_run, find_run_dirs(root)) if "images" not in run.config]
    if not runs:
        raise UserError(f"no runs below {root} (no metrics.json, error.txt or .hydra/): check the path")
    link_evaluations(runs)
    return runs


def seed_group_section(summary: str, groups: int, table: str, runs_table: str) -> list[str]:
    return [
        f"{summary}, in {plural(groups, 'seed group')} (runs that differ only in their seeds).",
        "",
        "## Seed groups",
        "",
        "Each metric: mean ± sample standard deviation (n - 1 in the denominator) over the group's",
        "completed runs; n counts them, `(n=k)` marks a metric fewer of them reported. Failed runs",
        "are counted in the status and left out of the numbers.",
        "",
        table,
        "",
        "## Runs",
        "",
        runs_table,
        "",
    ]


def resolution_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [
        "## Accuracy against test image size",
        "",
        "Test top-1 % of each model evaluated at other image sizes (`<run>/evals/<px>px`), mean ±",
        "sample standard deviation over the group's completed runs.",
        "",
        resolution_table(rows),
        "",
    ]


def optuna_section(best: Any) -> list[str]:
    if not best:
        return []
    dumped = yaml.safe_dump(best, sort_keys=False).strip()
    return ["## Optuna: best parameters", "", "```yaml", dumped, "```", ""]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a run, a multirun (sweep) or an outputs directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: PATH/report)"
    )
    parser.add_argument("--no-plots", action="store_true", help="only the tables")
    args = parser.parse_args(argv)
    exit_on_user_error(lambda _: make_report(args.path, args.out, plots=not args.no_plots), None)

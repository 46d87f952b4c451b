"""Compare runs: ``python -m vit_rpe.report <run, multirun or outputs dir> [--out DIR]``.

Finds every run below the path (a directory with ``metrics.json``, ``error.txt`` or Hydra's
``.hydra/``), groups the runs that differ only in their seed, and writes one table
(``report.csv``, ``report.md``: mean ± sample std and n of every metric per group, a lone run as
it is), the per-run table (``runs.csv``) and four plots with error bars: validation accuracy per
epoch, training seconds per epoch, best accuracy against parameters, and validation accuracy
against training time. Curves come from the CSV log (``<run>/csv/metrics.csv``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vit_rpe.utils.errors import UserError
from vit_rpe.utils.run import exit_on_user_error

# Folders inside a run that hold no other runs.
SKIP_DIRS = {".hydra", "csv", "tensorboard", "wandb", "checkpoints", "report", "__pycache__"}
# Report column -> metrics.json key: every number a run reports, averaged over a seed group.
METRICS = {
    "params": "params", "val_acc_best": "val/acc_best", "test_acc": "test/acc",
    "test_acc_top5": "test/acc_top5", "epochs": "epochs", "sec_per_epoch": "seconds_per_epoch",
    "images_per_sec": "train_images_per_sec",
}  # fmt: skip
DESCRIPTION = ("model", "attention", "rpe", "data")
RUN_COLUMNS = ("run", "label", "status", *DESCRIPTION, "seed", *METRICS, "error")
GROUP_COLUMNS = (
    "run", "label", "status", *DESCRIPTION, "seeds", "n", "failed",
    *(f"{metric}{suffix}" for metric in METRICS for suffix in ("", "_std", "_n")), "error",
)  # fmt: skip
ACCURACIES = ("val_acc_best", "test_acc", "test_acc_top5")
# Column headers of report.md (accuracies in %).
HEADERS = {
    "label": "run", "status": "status", "model": "model", "attention": "attention", "rpe": "rpe",
    "data": "data", "n": "n", "params": "params", "val_acc_best": "best val acc %",
    "test_acc": "test top-1 %", "test_acc_top5": "test top-5 %", "epochs": "epochs",
    "sec_per_epoch": "s/epoch", "images_per_sec": "images/s", "error": "error",
}  # fmt: skip
# Not part of what a run is: where it was written, what it was called, how it was started or resumed.
# Seeds (the key ``seed`` at any depth: data.seed and callbacks.step_seed.seed copy the top-level
# one) are what a seed group varies. Values inside the run's own directory are left out as well.
NOT_THE_EXPERIMENT = ("paths", "task_name", "tags", "resume_dir", "ckpt_path")
SEED_KEY = "seed"
PLOTS = {
    "val_acc.png": "Validation accuracy per epoch",
    "epoch_time.png": "Training seconds per epoch",
    "acc_vs_params.png": "Best validation accuracy against parameters",
    "acc_vs_time.png": "Validation accuracy against training time",
}


@dataclass
class Run:
    """What a run directory says about itself: config, metrics, per-epoch history, failure."""

    dir: Path
    status: str  # completed | failed | incomplete
    config: dict[str, Any]
    choices: dict[str, Any]  # config group choices (model=..., rpe=...) of a CLI run
    overrides: list[str]
    metrics: dict[str, Any]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(epoch, value)]
    error: str | None = None


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None  # a job killed while writing: reported as incomplete


def read_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of every metric in a Lightning CSV log (the last value logged in an epoch)."""
    if not path.is_file():
        return {}
    per_metric: dict[str, dict[int, float]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            try:
                epoch = int(float(row.get("epoch") or ""))
            except ValueError:
                continue
            for key, text in row.items():
                if key in ("epoch", "step") or not text:
                    continue
                with contextlib.suppress(ValueError):
                    per_metric.setdefault(key, {})[epoch] = float(text)
    return {key: sorted(values.items()) for key, values in per_metric.items()}


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("metrics.json", "error.txt", ".hydra/config.yaml"))


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory at or below ``root``, in natural order (job 2 before job 10)."""
    found = []
    stack = [root]
    while stack:
        path = stack.pop()
        if is_run_dir(path):
            found.append(path)
        stack.extend(p for p in path.iterdir() if p.is_dir() and p.name not in SKIP_DIRS)
    return sorted(found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])


def load_run(run_dir: Path) -> Run:
    metrics = read_json(run_dir / "metrics.json")
    hydra = read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    # config.yaml is the resolved config train() writes; Hydra's copy exists even if the job failed early.
    config = read_yaml(run_dir / "config.yaml") or resolve_composed(
        read_yaml(run_dir / ".hydra" / "config.yaml") or {}, run_dir
    )
    error = None
    if (run_dir / "error.txt").is_file() or (metrics or {}).get("status") == "failed":
        status = "failed"
        error = (metrics or {}).get("error") or last_line(run_dir / "error.txt")
    else:
        status = "completed" if metrics else "incomplete"
    return Run(
        dir=run_dir,
        status=status,
        config=config,
        choices=dict(hydra.get("hydra", {}).get("runtime", {}).get("choices") or {}),
        overrides=list(read_yaml(run_dir / ".hydra" / "overrides.yaml") or []),
        metrics=metrics or {},
        history=read_history(run_dir / "csv" / "metrics.csv"),
        error=error,
    )


def resolve_composed(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Hydra's composed config resolved as train() would have, so it compares with resolved ones.

    The run directory stands in for ``${hydra:runtime.output_dir}``; what cannot be resolved here
    (an environment that is gone) keeps the composed values.
    """
    cfg = OmegaConf.create(config)
    if "paths" in cfg:
        cfg.paths.output_dir = str(run_dir)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return config


def last_line(path: Path) -> str | None:
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return lines[-1].strip() if lines else None


def short_class(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if target else None


def describe(run: Run) -> dict[str, Any]:
    """Model, attention, RPE and data names: the CLI's group choices, else read off the config."""
    net = (run.config.get("model") or {}).get("net") or {}
    data = run.config.get("data") or {}
    rpe = net.get("rpe") if isinstance(net.get("rpe"), str) else (run.config.get("rpe") or {}).get("family")
    data_class = short_class(data.get("_target_"))
    data_name = data_class.removesuffix("DataModule").lower() if data_class else None
    return {
        "model": run.choices.get("model") or short_class(net.get("_target_")),
        "attention": net.get("attention") if isinstance(net.get("attention"), str) else None,
        "rpe": rpe,
        "data": run.choices.get("data") or data_name,
    }


def experiment_key(run: Run) -> str:
    """What a run is, as text: its config less seeds, names, locations and its own directory.

    Runs with the same key differ only in their seeds: one experiment measured several times.
    """
    if not run.config:
        return f"unknown config: {run.dir}"  # nothing says what it was: it stands alone
    output_dir = str((run.config.get("paths") or {}).get("output_dir") or run.dir).rstrip("/")

    def inside_run(value: Any) -> bool:
        return isinstance(value, str) and (value == output_dir or value.startswith(output_dir + "/"))

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != SEED_KEY and not inside_run(v)}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    config = {k: v for k, v in run.config.items() if k not in NOT_THE_EXPERIMENT}
    return json.dumps(strip(config), sort_keys=True, default=str)


@dataclass
class Group:
    """Runs that differ only in their seed: one result, measured once per run."""

    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [run for run in self.runs if run.status == "completed"]


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Seed groups (see ``experiment_key``), in the order of their first runs."""
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(experiment_key(run), Group([])).runs.append(run)
    return list(groups.values())


class Stat(NamedTuple):
    mean: Any  # a lone value (or values all equal) as it is
    std: float | None  # sample standard deviation (n - 1 in the denominator); None for n < 2
    n: int


def stat(values: Iterable[Any]) -> Stat:
    found = [v for v in values if v is not None]
    if not found:
        return Stat(None, None, 0)
    mean = found[0] if all(v == found[0] for v in found) else statistics.fmean(found)
    return Stat(mean, statistics.stdev(found) if len(found) > 1 else None, len(found))


def epoch_stats(curves: Sequence[dict[int, float]]) -> dict[int, Stat]:
    """Per-epoch statistics of a group's curves, which may stop at different epochs."""
    epochs = sorted(set().union(*curves))
    return {epoch: stat(curve[epoch] for curve in curves if epoch in curve) for epoch in epochs}


def labels(
    runs: Sequence[Run], root: Path, seeds: bool = True, fallback: Sequence[str] | None = None
) -> list[str]:
    """Short names: what differs between the runs (their overrides, else their names, else
    ``fallback`` or their directories).

    ``seeds=False`` names seed groups by their first runs: the seed of one of them says nothing.
    """

    def differing(items: list[dict[str, Any]]) -> list[str]:
        keys = dict.fromkeys(k for item in items for k in item)
        return [k for k in keys if len({str(item.get(k)) for item in items}) > 1]

    def pick(items: list[dict[str, Any]], keys: list[str]) -> list[str]:
        return [", ".join(f"{k.rsplit('.', 1)[-1]}={short(item.get(k))}" for k in keys) for item in items]

    def overrides(run: Run) -> dict[str, str]:
        pairs = [o.split("=", 1) for o in run.overrides if "=" in o]
        named = {key.lstrip("+~"): value for key, value in pairs}  # +variant=x is named variant=x
        return {k: v for k, v in named.items() if seeds or k.rsplit(".", 1)[-1] != SEED_KEY}

    for items in ([overrides(run) for run in runs], [describe(run) for run in runs]):
        keys = differing(items)
        if keys:
            found = pick(items, keys)
            if len(set(found)) == len(found):
                return found
    return list(fallback) if fallback else [relative(run.dir, root) for run in runs]


def short(value: Any) -> str:
    """Sampled numbers (an Optuna learning rate) to three significant digits."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() else f"{number:.3g}"


def relative(path: Path, root: Path) -> str:
    text = str(path.relative_to(root)) if path != root else path.name
    return text or "."


def run_row(run: Run, label: str, root: Path) -> dict[str, Any]:
    return {
        "run": relative(run.dir, root),
        "label": label,
        "status": run.status,
        **describe(run),
        "seed": run.config.get(SEED_KEY),
        **{column: run.metrics.get(key) for column, key in METRICS.items()},
        "error": run.error,
    }


def group_row(members: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
    """A seed group's line from its runs' lines: each metric's mean, sample std and n over the
    completed runs. Failed and incomplete runs are counted in ``status`` (and ``failed``) and left
    out of the numbers."""
    done = [m for m in members if m["status"] == "completed"]
    counts = {s: sum(m["status"] == s for m in members) for s in ("completed", "failed", "incomplete")}
    mixed = sum(n > 0 for n in counts.values()) > 1
    row = {
        "run": ";".join(m["run"] for m in members),
        "label": label,
        "status": ", ".join(f"{n} {s}" for s, n in counts.items() if n) if mixed else members[0]["status"],
        **{key: members[0][key] for key in DESCRIPTION},
        "seeds": ";".join(str(m["seed"]) for m in members if m["seed"] is not None) or None,
        "n": len(done),
        "failed": counts["failed"],
        "error": next((m["error"] for m in members if m["error"]), None),
    }
    for metric in METRICS:
        mean, std, n = stat(m[metric] for m in done)
        row |= {metric: mean, f"{metric}_std": std, f"{metric}_n": n}
    return row


def write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in columns} for row in rows)


def cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in ACCURACIES:
        return f"{100 * value:.2f}"
    if key == "params":
        return f"{round(value):,}"
    if key == "sec_per_epoch":
        return f"{value:.3g}"
    if key == "images_per_sec":
        return f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def stat_cell(key: str, row: dict[str, Any]) -> str:
    """``mean ± std`` of a group; ``(n=k)`` when fewer of its runs reported this metric."""
    mean, std, n = row[key], row[f"{key}_std"], row[f"{key}_n"]
    text = cell(key, mean)
    if std is not None and (std > 0 or key not in ("params", "epochs")):  # counts that agree: no ± 0
        spread = {"sec_per_epoch": f"{std:.2g}", "epochs": f"{std:.2g}"}.get(key, cell(key, std))
        text += f" ± {spread}"
    return text + (f" (n={n})" if 0 < n < row["n"] else "")


def markdown_table(rows: Sequence[dict[str, Any]], grouped: bool = False) -> str:
    """The table for a README: accuracies in %, only the columns that have a value somewhere."""
    shown = [k for k in HEADERS if k != "n" or grouped]
    keys = [k for k in shown if any(row.get(k) is not None for row in rows)]
    lines = ["| " + " | ".join(HEADERS[k] for k in keys) + " |"]
    lines.append("|" + "|".join("---:" if k == "n" or k in METRICS else "---" for k in keys) + "|")
    for row in rows:
        cells = [stat_cell(k, row) if grouped and k in METRICS else cell(k, row.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cumulative(values: Sequence[tuple[int, float]]) -> dict[int, float]:
    total, out = 0.0, {}
    for epoch, seconds in values:
        total += seconds
        out[epoch] = total
    return out


def plot_all(groups: Sequence[Group], names: Sequence[str], out: Path) -> list[str]:
    """The four PNG plots, one curve or point per seed group with its ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [(group, name) for group, name in zip(groups, names) if group.completed]
    colors = plt.get_cmap("tab10" if len(done) <= 10 else "tab20")
    markers = "osD^vP*X<>"  # groups with equal results still show: each has its own marker
    styles = [
        dict(color=colors(i % colors.N), marker=markers[i % len(markers)], label=name)
        for i, (_, name) in enumerate(done)
    ]
    written = []

    def save(fig, ax, file: str, xlabel: str, ylabel: str) -> None:
        ax.set(title=PLOTS[file], xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        fig.savefig(out / file, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(file)

    def curves(file: str, metric: str, ylabel: str, x_of=None, xlabel: str = "epoch") -> None:
        fig, ax = plt.subplots(figsize=(7, 4))
        for (group, _), style in zip(done, styles):
            ys = epoch_stats([dict(run.history.get(metric, [])) for run in group.completed])
            if x_of:  # e.g. cumulated training seconds: the group's mean at each epoch
                xs = {e: s.mean for e, s in epoch_stats([x_of(run) for run in group.completed]).items()}
            else:
                xs = {epoch: epoch + 1 for epoch in ys}
            points = [(xs[epoch], s) for epoch, s in ys.items() if epoch in xs]
            if points:
                x, y = [p[0] for p in points], [p[1].mean for p in points]
                spread = [p[1].std or 0.0 for p in points]
                ax.errorbar(x, y, yerr=spread, markersize=4, capsize=2, elinewidth=0.8, alpha=0.85, **style)
        if not x_of:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        save(fig, ax, file, xlabel, ylabel)

    curves("val_acc.png", "val/acc", "validation accuracy")
    curves("epoch_time.png", "train/epoch_time", "seconds (training only)")
    curves(
        "acc_vs_time.png", "val/acc", "validation accuracy",
        x_of=lambda run: cumulative(run.history.get("train/epoch_time", [])), xlabel="training seconds",
    )  # fmt: skip

    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = []
    for (group, _), style in zip(done, styles):
        params = stat(run.metrics.get("params") for run in group.completed).mean
        acc = stat(run.metrics.get("val/acc_best") for run in group.completed)
        if params and acc.mean is not None:
            ax.errorbar(
                params, acc.mean, yerr=acc.std or 0.0, linestyle="none", capsize=3, alpha=0.85, **style
            )
            sizes.append(params)
    if sizes and max(sizes) > 10 * min(sizes):
        ax.set_xscale("log")
    else:
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    save(fig, ax, "acc_vs_params.png", "parameters", "best validation accuracy")
    return written


def make_report(root: Path, out: Path | None = None, plots: bool = True) -> Path:
    """Write report.csv (seed groups), runs.csv, report.md and the plots for every run below ``root``.

    Returns report.md.
    """
    shown, root = Path(root), Path(root).resolve()  # the path as given goes into report.md
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: give a run, multirun or outputs directory")
    runs = [load_run(d) for d in find_run_dirs(root)]
    if not runs:
        raise UserError(f"no runs below {root} (no metrics.json, error.txt or .hydra/): check the path")
    out = Path(out).resolve() if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)

    run_rows = [run_row(run, label, root) for run, label in zip(runs, labels(runs, root))]
    row_of = {run.dir: row for run, row in zip(runs, run_rows)}
    groups = group_runs(runs)
    directories = [", ".join(relative(run.dir, root) for run in group.runs) for group in groups]
    names = labels([group.runs[0] for group in groups], root, seeds=False, fallback=directories)
    group_rows = [group_row([row_of[run.dir] for run in g.runs], name) for g, name in zip(groups, names)]
    write_csv(group_rows, out / "report.csv", GROUP_COLUMNS)
    write_csv(run_rows, out / "runs.csv", RUN_COLUMNS)
    images = plot_all(groups, names, out) if plots else []

    counts = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "incomplete")}
    statuses = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    summary = f"{plural(len(runs), 'run')} below `{shown}`: {statuses}"
    if any(len(group.runs) > 1 for group in groups):
        table = markdown_table(group_rows, grouped=True)
        body = [
            f"{summary}, in {plural(len(groups), 'seed group')} (runs that differ only in their seeds).",
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
            markdown_table(run_rows),
        ]
    else:
        table = markdown_table(run_rows)
        body = [f"{summary}.", "", table]
    lines = [f"# Runs in {root.name}", "", *body, ""]
    best = read_yaml(root / "optimization_results.yaml")
    if best:
        lines += [
            "## Optuna: best parameters",
            "",
            "```yaml",
            yaml.safe_dump(best, sort_keys=False).strip(),
            "```",
            "",
        ]
    for image in images:
        lines += [f"![{PLOTS[image]}]({image})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    print(table)
    beside = f"report.csv, runs.csv and {len(images)} plots beside it"
    print(f"\nreport: {report} ({plural(len(runs), 'run')} in {plural(len(groups), 'seed group')}; {beside})")
    return report


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


if __name__ == "__main__":
    main()

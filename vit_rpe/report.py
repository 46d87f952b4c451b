"""Compare runs: ``python -m vit_rpe.report <run, multirun or outputs dir> [--out DIR]``.

Finds every run below the path (a directory with ``metrics.json``, ``error.txt`` or Hydra's
``.hydra/``), and writes one table (``report.csv``, ``report.md``) and four plots: validation
accuracy per epoch, training seconds per epoch, best accuracy against parameters, and validation
accuracy against training time. Curves come from the CSV log (``<run>/csv/metrics.csv``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vit_rpe.utils.errors import UserError
from vit_rpe.utils.run import exit_on_user_error

# Folders inside a run that hold no other runs.
SKIP_DIRS = {".hydra", "csv", "tensorboard", "wandb", "checkpoints", "report", "__pycache__"}
COLUMNS = (
    "run", "label", "status", "model", "attention", "rpe", "data", "params", "val_acc_best", "test_acc",
    "test_acc_top5", "epochs", "sec_per_epoch", "images_per_sec", "error",
)  # fmt: skip
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
    config = read_yaml(run_dir / "config.yaml") or read_yaml(run_dir / ".hydra" / "config.yaml") or {}
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


def labels(runs: Sequence[Run], root: Path) -> list[str]:
    """Short names for plots: what differs between the runs (their overrides, else their names)."""

    def differing(items: list[dict[str, Any]]) -> list[str]:
        keys = dict.fromkeys(k for item in items for k in item)
        return [k for k in keys if len({str(item.get(k)) for item in items}) > 1]

    def pick(items: list[dict[str, Any]], keys: list[str]) -> list[str]:
        return [", ".join(f"{k.rsplit('.', 1)[-1]}={short(item.get(k))}" for k in keys) for item in items]

    overrides = [dict(o.split("=", 1) for o in run.overrides if "=" in o) for run in runs]
    names = [describe(run) for run in runs]
    for items in (overrides, names):
        keys = differing(items)
        if keys:
            found = pick(items, keys)
            if len(set(found)) == len(found):
                return found
    return [relative(run.dir, root) for run in runs]


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


def summary_rows(runs: Sequence[Run], root: Path) -> list[dict[str, Any]]:
    rows = []
    for run, label in zip(runs, labels(runs, root)):
        m = run.metrics
        rows.append(
            {
                "run": relative(run.dir, root),
                "label": label,
                "status": run.status,
                **describe(run),
                "params": m.get("params"),
                "val_acc_best": m.get("val/acc_best"),
                "test_acc": m.get("test/acc"),
                "test_acc_top5": m.get("test/acc_top5"),
                "epochs": m.get("epochs"),
                "sec_per_epoch": m.get("seconds_per_epoch"),
                "images_per_sec": m.get("train_images_per_sec"),
                "error": run.error,
            }
        )
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS} for row in rows)


def cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in ("val_acc_best", "test_acc", "test_acc_top5"):
        return f"{100 * value:.2f}"
    if key == "params":
        return f"{int(value):,}"
    if key == "sec_per_epoch":
        return f"{value:.3g}"
    if key == "images_per_sec":
        return f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table for a README: accuracies in %, only the columns that have a value somewhere."""
    headers = {
        "label": "run", "status": "status", "model": "model", "attention": "attention", "rpe": "rpe",
        "data": "data", "params": "params", "val_acc_best": "best val acc %", "test_acc": "test top-1 %",
        "test_acc_top5": "test top-5 %", "epochs": "epochs", "sec_per_epoch": "s/epoch",
        "images_per_sec": "images/s", "error": "error",
    }  # fmt: skip
    keys = [k for k in headers if any(row.get(k) is not None for row in rows)]
    lines = ["| " + " | ".join(headers[k] for k in keys) + " |"]
    numeric = {
        "params",
        "val_acc_best",
        "test_acc",
        "test_acc_top5",
        "epochs",
        "sec_per_epoch",
        "images_per_sec",
    }
    lines.append("|" + "|".join("---:" if k in numeric else "---" for k in keys) + "|")
    lines += ["| " + " | ".join(cell(k, row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def cumulative(values: Sequence[tuple[int, float]]) -> dict[int, float]:
    total, out = 0.0, {}
    for epoch, seconds in values:
        total += seconds
        out[epoch] = total
    return out


def plot_all(runs: Sequence[Run], names: Sequence[str], out: Path) -> list[str]:
    """The four PNG plots; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [(run, name) for run, name in zip(runs, names) if run.status == "completed"]
    colors = plt.get_cmap("tab10" if len(done) <= 10 else "tab20")
    markers = "osD^vP*X<>"  # runs with equal results still show: each has its own marker
    style = {
        run.dir: dict(color=colors(i % colors.N), marker=markers[i % len(markers)], label=name)
        for i, (run, name) in enumerate(done)
    }
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
        for run, _ in done:
            points = run.history.get(metric, [])
            xs = x_of(run) if x_of else {epoch: epoch + 1 for epoch, _ in points}
            points = [(xs[epoch], value) for epoch, value in points if epoch in xs]
            if points:
                ax.plot(*zip(*points), markersize=4, alpha=0.85, **style[run.dir])
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
    for run, _ in done:
        params, acc = run.metrics.get("params"), run.metrics.get("val/acc_best")
        if params and acc is not None:
            ax.scatter(params, acc, s=40, alpha=0.85, **style[run.dir])
            sizes.append(params)
    if sizes and max(sizes) > 10 * min(sizes):
        ax.set_xscale("log")
    else:
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    save(fig, ax, "acc_vs_params.png", "parameters", "best validation accuracy")
    return written


def make_report(root: Path, out: Path | None = None, plots: bool = True) -> Path:
    """Write report.csv, report.md and the plots for every run below ``root``; returns report.md."""
    shown, root = Path(root), Path(root).resolve()  # the path as given goes into report.md
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: give a run, multirun or outputs directory")
    runs = [load_run(d) for d in find_run_dirs(root)]
    if not runs:
        raise UserError(f"no runs below {root} (no metrics.json, error.txt or .hydra/): check the path")
    out = Path(out).resolve() if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(runs, root)
    write_csv(rows, out / "report.csv")
    images = plot_all(runs, [row["label"] for row in rows], out) if plots else []

    counts = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "incomplete")}
    lines = [
        f"# Runs in {root.name}",
        "",
        f"{len(runs)} runs below `{shown}`: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
        "",
        markdown_table(rows),
        "",
    ]
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
    print(markdown_table(rows))
    print(f"\nreport: {report} ({len(runs)} runs; report.csv and {len(images)} plots beside it)")
    return report


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

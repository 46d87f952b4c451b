"""The report's tables: one row per run, one per seed group, as CSV and as markdown for a README."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_rpe.report.groups import SEED_KEY, stat
from vit_rpe.report.runs import Run, describe, relative

# Report column -> metrics.json key: every number a run reports, averaged over a seed group.
METRICS = {
    "params": "params", "val_acc_best": "val/acc_best", "test_acc": "test/acc",
    "test_acc_top5": "test/acc_top5", "epochs": "epochs", "sec_per_epoch": "seconds_per_epoch",
    "images_per_sec": "train_images_per_sec",
}  # fmt: skip
# What an evaluation's row takes from the run whose checkpoint it tested.
MODEL_KEYS = ("params",)
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


def run_row(run: Run, label: str, root: Path) -> dict[str, Any]:
    # an evaluation tests its training run's model: the model's size is that run's
    metrics = (
        {**{k: run.trained_by.metrics.get(k) for k in MODEL_KEYS}, **run.metrics}
        if run.trained_by
        else run.metrics
    )
    return {
        "run": relative(run.dir, root),
        "label": label,
        "status": run.status,
        **describe(run),
        "seed": run.config.get(SEED_KEY),
        **{column: metrics.get(key) for column, key in METRICS.items()},
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

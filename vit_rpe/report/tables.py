"""The report's tables: one row per run, one per seed group, as CSV and as markdown for a README."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_rpe.report.groups import SEED_KEY, Group, resolution_stats, stat, worst_classes
from vit_rpe.report.runs import Run, describe, relative

# Report column -> metrics.json key: every number a run reports, averaged over a seed group.
METRICS = {
    "params": "params", "gflops_per_image": "gflops_per_image", "val_acc_best": "val/acc_best",
    "test_acc": "test/acc", "test_acc_top5": "test/acc_top5", "test_macro_f1": "test/macro_f1",
    "epochs": "epochs", "sec_per_epoch": "seconds_per_epoch", "images_per_sec": "train_images_per_sec",
    "infer_images_per_sec": "infer_images_per_sec",
}  # fmt: skip
# What an evaluation's row takes from the run whose checkpoint it tested.
MODEL_KEYS = ("params",)  # not GFLOPs: an evaluation may run at another image size
DESCRIPTION = ("model", "attention", "rpe", "data")
RUN_COLUMNS = ("run", "label", "status", *DESCRIPTION, "seed", *METRICS, "worst_classes", "error")
GROUP_COLUMNS = (
    "run", "label", "status", *DESCRIPTION, "seeds", "n", "failed",
    *(f"{metric}{suffix}" for metric in METRICS for suffix in ("", "_std", "_n")), "worst_classes",
    "error",
)  # fmt: skip
# Numbers a run counts rather than measures: equal across seeds, they show without "± 0".
COUNTS = ("params", "gflops_per_image", "epochs")
RESOLUTION_COLUMNS = ("label", "image_size", "test_acc", "test_acc_std", "n")
ACCURACIES = ("val_acc_best", "test_acc", "test_acc_top5", "test_macro_f1")
# Column headers of report.md (accuracies in %).
HEADERS = {
    "label": "run", "status": "status", "model": "model", "attention": "attention", "rpe": "rpe",
    "data": "data", "n": "n", "params": "params", "gflops_per_image": "GFLOPs/image",
    "val_acc_best": "best val acc %", "test_acc": "test top-1 %", "test_acc_top5": "test top-5 %",
    "test_macro_f1": "test macro-F1 %", "epochs": "epochs", "sec_per_epoch": "s/epoch",
    "images_per_sec": "train images/s", "infer_images_per_sec": "inference images/s",
    "worst_classes": "worst classes (test recall %)", "error": "error",
}  # fmt: skip


def run_row(run: Run, label: str, root: Path) -> dict[str, Any]:
    metrics = run.metrics
    if run.trained_by:  # an evaluation tests its training run's model: the model's size is that run's
        metrics = {**{k: run.trained_by.metrics.get(k) for k in MODEL_KEYS}, **metrics}
    return {
        "run": relative(run.dir, root),
        "label": label,
        "status": run.status,
        **describe(run),
        "seed": run.config.get(SEED_KEY),
        **{column: metrics.get(key) for column, key in METRICS.items()},
        "worst_classes": worst_text([run]),
        "error": run.error,
    }


def worst_text(runs: Sequence[Run]) -> str | None:
    """The three classes the runs recognise worst, with their mean test recall: ``cat 41.0%, ...``."""
    worst = worst_classes(runs)
    return ", ".join(f"{name} {100 * recall.mean:.1f}%" for name, recall in worst) or None


def group_row(group: Group, members: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
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
        "worst_classes": worst_text(group.completed),
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
    if key in ("sec_per_epoch", "gflops_per_image"):
        return f"{value:.3g}"
    if key in ("images_per_sec", "infer_images_per_sec"):
        return f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def stat_cell(key: str, row: dict[str, Any]) -> str:
    """``mean ± std`` of a group; ``(n=k)`` when fewer of its runs reported this metric."""
    mean, std, n = row[key], row[f"{key}_std"], row[f"{key}_n"]
    text = cell(key, mean)
    if std is not None and (std > 0 or key not in COUNTS):  # counts that agree: no ± 0
        spread = f"{std:.2g}" if key in ("sec_per_epoch", "epochs", "gflops_per_image") else cell(key, std)
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


def resolution_rows(groups: Sequence[Group], names: Sequence[str]) -> list[dict[str, Any]]:
    """Test accuracy at each image size a group's models were evaluated at (``evals/<px>px``)."""
    rows = []
    for group, name in zip(groups, names):
        for size, acc in resolution_stats(group.completed).items():
            rows.append(
                {"label": name, "image_size": size, "test_acc": acc.mean, "test_acc_std": acc.std, "n": acc.n}
            )
    return rows


def resolution_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per group, one column per test image size: accuracy % as mean ± std."""
    sizes = sorted({row["image_size"] for row in rows})
    names = list(dict.fromkeys(row["label"] for row in rows))
    found = {(row["label"], row["image_size"]): row for row in rows}
    lines = ["| run | " + " | ".join(f"{size} px" for size in sizes) + " |"]
    lines.append("|---|" + "|".join("---:" for _ in sizes) + "|")
    for name in names:
        cells = []
        for size in sizes:
            row = found.get((name, size))
            text = cell("test_acc", row and row["test_acc"])
            if row and row["test_acc_std"] is not None:
                text += f" ± {cell('test_acc', row['test_acc_std'])}"
            cells.append(text)
        lines.append(f"| {cell('label', name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

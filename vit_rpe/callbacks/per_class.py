"""Per-class test results in the run directory: ``per_class.csv`` and ``confusion_matrix.png``.

The classifier counts the test's (true, predicted) pairs in a torchmetrics
``MulticlassConfusionMatrix``, which sums the ranks' counts under DDP; everything here is derived
from that one matrix, so the table, the picture and the macro averages in metrics.json agree.

- recall (the class's accuracy) = correct / support, precision = correct / predicted,
  F1 = 2 correct / (support + predicted); a ratio with nothing to divide by is left empty in
  the CSV (NaN here). Support-weighted, the recalls give back the test accuracy.
- ``test/macro_f1`` and ``test/balanced_acc`` (the mean recall) average over the classes that
  have test images, as scikit-learn's ``f1_score(average="macro", labels=<those classes>)`` and
  ``balanced_accuracy_score`` do.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)

PER_CLASS_COLUMNS = ("class", "support", "recall", "precision", "f1")
# Up to this many classes every row and column is named; above, only the most-confused ones.
ALL_LABELS_UP_TO = 40
MOST_CONFUSED_NAMED = 30


def class_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """support, recall, precision, f1 per class from a [true, predicted] count matrix."""
    counts = confusion.double()
    correct = counts.diagonal()
    support, predicted = counts.sum(dim=1), counts.sum(dim=0)
    return {
        "support": support,
        "recall": correct / support,  # 0/0 -> NaN: no test image of the class
        "precision": correct / predicted,
        "f1": 2 * correct / (support + predicted),
    }


def macro_scores(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Macro F1 and balanced accuracy, over the classes with test images."""
    scores = class_scores(confusion)
    present = scores["support"] > 0
    if not present.any():
        nan = torch.tensor(float("nan"))
        return nan, nan
    return scores["f1"][present].mean().float(), scores["recall"][present].mean().float()


def write_per_class_csv(confusion: torch.Tensor, names: Sequence[str], path: Path) -> None:
    scores = {key: value.tolist() for key, value in class_scores(confusion.cpu()).items()}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PER_CLASS_COLUMNS)
        for i, name in enumerate(names):
            row = [scores[key][i] for key in ("recall", "precision", "f1")]
            writer.writerow(
                [name, int(scores["support"][i]), *("" if math.isnan(v) else f"{v:.6f}" for v in row)]
            )


def most_confused(confusion: torch.Tensor, count: int) -> list[int]:
    """The classes (sorted by index) whose test images are most often taken for another class,
    and those most often wrongly predicted: where a reader of a large matrix looks."""
    counts = confusion.double()
    wrong = counts - counts.diagonal().diag()
    mass = wrong.sum(dim=1) + wrong.sum(dim=0)
    chosen = mass.argsort(descending=True, stable=True)[:count]
    return sorted(int(i) for i in chosen if mass[i] > 0) or list(range(min(count, len(counts))))


def plot_confusion_matrix(
    confusion: torch.Tensor, names: Sequence[str], path: Path, title: str = "test confusion matrix"
) -> None:
    """The row-normalised matrix (each true class's images spread over the predictions).

    Every class is named up to ALL_LABELS_UP_TO classes; with more (Tiny ImageNet's 200), only
    the MOST_CONFUSED_NAMED most-confused classes are, so the names stay readable. A square-root
    colour scale keeps small shares of mistakes visible next to the diagonal.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    counts = confusion.double().cpu()
    rows = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(names)
    labelled = list(range(n)) if n <= ALL_LABELS_UP_TO else most_confused(counts, MOST_CONFUSED_NAMED)
    side = min(3.5 + 0.28 * min(n, ALL_LABELS_UP_TO), 14.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=1)
    image = ax.imshow(rows.numpy(), cmap="Blues", norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    font = 8 if len(labelled) <= 20 else 7
    ax.set_xticks(labelled, [names[i] for i in labelled], rotation=90, fontsize=font)
    ax.set_yticks(labelled, [names[i] for i in labelled], fontsize=font)
    if n <= 12:  # room for the numbers
        for i in range(n):
            for j in range(n):
                if counts[i, j] > 0:
                    colour = "white" if rows[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    note = "" if n <= ALL_LABELS_UP_TO else f" ({len(labelled)} most-confused of {n} classes named)"
    ax.set_xlabel("predicted class" + note)
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def class_names_of(trainer: L.Trainer, pl_module: L.LightningModule, num_classes: int) -> list[str]:
    """The data's class names, else the backbone's, else the class indices."""
    for names in (
        getattr(trainer.datamodule, "class_names", None),
        getattr(pl_module.net, "class_names", None),
    ):
        if names is not None and len(names) == num_classes:
            return [str(name) for name in names]
    return [str(i) for i in range(num_classes)]


class PerClassResults(L.Callback):
    """At the end of every test: ``per_class.csv`` and ``confusion_matrix.png`` in ``dirpath``
    (default: the trainer's ``default_root_dir``, the run directory), written by rank 0 from
    the classifier's ``test_confusion`` (the job's counts, all ranks summed)."""

    def __init__(self, dirpath: str | Path | None = None):
        self.dirpath = dirpath

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = getattr(pl_module, "test_confusion", None)
        if metric is None or not metric.update_called:
            return
        confusion = metric.compute()  # a collective under DDP: every rank calls it
        if not trainer.is_global_zero:
            return
        folder = Path(self.dirpath or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        names = class_names_of(trainer, pl_module, len(confusion))
        write_per_class_csv(confusion, names, folder / "per_class.csv")
        plot_confusion_matrix(confusion, names, folder / "confusion_matrix.png")
        log.info("per-class results: %s, %s", folder / "per_class.csv", folder / "confusion_matrix.png")

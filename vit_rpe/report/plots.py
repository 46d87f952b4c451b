"""The report's plots: one curve, point or line per seed group, with its ± std error bars.

``plot_all`` lists every plot; ``Plots`` draws the three kinds (curves over epochs, one point per
group, lines through several points per group) and saves them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vit_rpe.report.groups import Group, Stat, epoch_stats, resolution_stats, stat
from vit_rpe.report.runs import Run

# Drawn for every report.
PLOTS = {
    "val_acc.png": "Validation accuracy per epoch",
    "epoch_time.png": "Training seconds per epoch",
    "acc_vs_params.png": "Best validation accuracy against parameters",
    "acc_vs_time.png": "Validation accuracy against training time",
}
# Drawn when the runs vary what is on the x axis (a sweep over models, data shares, test sizes).
COMPARISONS = {
    "acc_vs_gflops.png": "Test accuracy against GFLOPs per image",
    "acc_vs_infer_speed.png": "Test accuracy against inference speed",
    "acc_vs_train_fraction.png": "Test accuracy against the share of training data",
    "acc_vs_resolution.png": "Test accuracy against test image size",
}
TITLES = {**PLOTS, **COMPARISONS}
TRAIN_FRACTION = "train_fraction"  # data.train_fraction; a run without it trained on all its data

Series = dict[str, list[tuple[float, Stat]]]  # line name -> [(x, accuracy)]


def plot_all(groups: Sequence[Group], names: Sequence[str], out: Path) -> list[str]:
    """Every plot that has something to show; returns the files written into ``out``."""
    plots = Plots([(group, name) for group, name in zip(groups, names) if group.completed], out)
    plots.curves("val_acc.png", "val/acc", "validation accuracy")
    plots.curves("epoch_time.png", "train/epoch_time", "seconds (training only)")
    plots.curves(
        "acc_vs_time.png", "val/acc", "validation accuracy",
        x_of=lambda run: cumulative(run.history.get("train/epoch_time", [])), xlabel="training seconds",
    )  # fmt: skip
    plots.points("acc_vs_params.png", "params", "val/acc_best", "parameters", always=True)
    plots.points("acc_vs_gflops.png", "gflops_per_image", "test/acc", "GFLOPs per image")
    plots.points("acc_vs_infer_speed.png", "infer_images_per_sec", "test/acc", "inference images/s")
    fractions = train_fraction_series(plots.done)
    if len({x for line in fractions.values() for x, _ in line}) > 1:
        plots.lines(
            "acc_vs_train_fraction.png", fractions, "share of the training split (data.train_fraction)"
        )
    sizes = {name: list(resolution_stats(group.completed).items()) for group, name in plots.done}
    if any(sizes.values()):
        plots.lines("acc_vs_resolution.png", sizes, "test image size (px)")
    return plots.written


class Plots:
    """Draws the groups that have completed runs, each in its own colour and marker."""

    def __init__(self, done: Sequence[tuple[Group, str]], out: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.done, self.out, self.written = plt, done, out, []
        colors = plt.get_cmap("tab10" if len(done) <= 10 else "tab20")
        markers = "osD^vP*X<>"  # groups with equal results still show: each has its own marker
        self.style = {
            name: dict(color=colors(i % colors.N), marker=markers[i % len(markers)], label=name)
            for i, (_, name) in enumerate(done)
        }

    def save(self, fig, ax, file: str, xlabel: str, ylabel: str) -> None:
        ax.set(title=TITLES[file], xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        fig.savefig(self.out / file, dpi=100, bbox_inches="tight")
        self.plt.close(fig)
        self.written.append(file)

    def curves(
        self, file: str, metric: str, ylabel: str, x_of: Callable[[Run], dict] | None = None, xlabel="epoch"
    ) -> None:
        """``metric`` per epoch from the CSV logs; ``x_of`` another x per epoch (cumulated seconds)."""
        from matplotlib.ticker import MaxNLocator

        fig, ax = self.plt.subplots(figsize=(7, 4))
        for group, name in self.done:
            ys = epoch_stats([dict(run.history.get(metric, [])) for run in group.completed])
            if x_of:  # the group's mean at each epoch
                xs = {e: s.mean for e, s in epoch_stats([x_of(run) for run in group.completed]).items()}
            else:
                xs = {epoch: epoch + 1 for epoch in ys}
            points = [(xs[epoch], s) for epoch, s in ys.items() if epoch in xs]
            if points:
                x, y = [p[0] for p in points], [p[1].mean for p in points]
                spread = [p[1].std or 0.0 for p in points]
                style = self.style[name]
                ax.errorbar(x, y, yerr=spread, markersize=4, capsize=2, elinewidth=0.8, alpha=0.85, **style)
        if not x_of:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.save(fig, ax, file, xlabel, ylabel)

    def points(self, file: str, x_key: str, y_key: str, xlabel: str, always: bool = False) -> None:
        """One point per group: the means of two metrics, each with its seed spread as an error bar.
        Unless ``always``, only where two groups or more differ in ``x_key``."""
        found = []
        for group, name in self.done:
            x = stat(run.metrics.get(x_key) for run in group.completed)
            y = stat(run.metrics.get(y_key) for run in group.completed)
            if x.mean and y.mean is not None:
                found.append((x, y, self.style[name]))
        if not always and len({x.mean for x, _, _ in found}) < 2:
            return
        fig, ax = self.plt.subplots(figsize=(7, 4))
        for x, y, style in found:
            ax.errorbar(
                x.mean, y.mean, xerr=x.std or 0.0, yerr=y.std or 0.0, linestyle="none", capsize=3,
                alpha=0.85, **style,
            )  # fmt: skip
        log_scale_if_wide(ax, [x.mean for x, _, _ in found], plain=True)
        ylabel = "best validation accuracy" if y_key == "val/acc_best" else "test accuracy"
        self.save(fig, ax, file, xlabel, ylabel)

    def lines(self, file: str, series: Series, xlabel: str) -> None:
        """One line per series through its points (x, test accuracy ± std); a series takes the
        style of the group it is named after, or of its first group."""
        fig, ax = self.plt.subplots(figsize=(7, 4))
        styles = iter(self.style.values())
        for name, found in series.items():
            if not found:
                continue
            found = sorted(found, key=lambda point: point[0])
            x, y = [p[0] for p in found], [p[1].mean for p in found]
            style = {**(self.style[name] if name in self.style else next(styles)), "label": name}
            ax.errorbar(x, y, yerr=[p[1].std or 0.0 for p in found], capsize=3, alpha=0.85, **style)
        log_scale_if_wide(ax, [x for found in series.values() for x, _ in found])
        self.save(fig, ax, file, xlabel, "test accuracy")


def train_fraction_series(done: Sequence[tuple[Group, str]]) -> Series:
    """Data efficiency: groups whose names differ only in ``train_fraction=`` are one line."""
    series: Series = {}
    for group, name in done:
        acc = stat(run.metrics.get("test/acc") for run in group.completed)
        if acc.mean is not None:
            line = ", ".join(p for p in name.split(", ") if not p.startswith(f"{TRAIN_FRACTION}=")) or "all"
            data = group.runs[0].config.get("data") or {}
            series.setdefault(line, []).append((float(data.get(TRAIN_FRACTION) or 1.0), acc))
    return series


def log_scale_if_wide(ax: Any, xs: Sequence[float], plain: bool = False) -> None:
    """A log x axis where the values span more than a factor of ten (parameters, data shares)."""
    if xs and max(xs) > 10 * min(xs):
        ax.set_xscale("log")
    elif plain:
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)


def cumulative(values: Sequence[tuple[int, float]]) -> dict[int, float]:
    total, out = 0.0, {}
    for epoch, seconds in values:
        total += seconds
        out[epoch] = total
    return out

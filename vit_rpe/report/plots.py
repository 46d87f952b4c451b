"""The report's plots: one curve or point per seed group, with its ± std error bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vit_rpe.report.groups import Group, Stat, epoch_stats, resolution_stats, stat

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


def cumulative(values: Sequence[tuple[int, float]]) -> dict[int, float]:
    total, out = 0.0, {}
    for epoch, seconds in values:
        total += seconds
        out[epoch] = total
    return out


def plot_all(groups: Sequence[Group], names: Sequence[str], out: Path) -> list[str]:
    """The PNG plots, one curve or point per seed group with its ± std error bars."""
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
        ax.set(title=TITLES[file], xlabel=xlabel, ylabel=ylabel)
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

    def points(file: str, x_key: str, y_key: str, xlabel: str, ylabel: str, always: bool = False) -> None:
        """One point per group: the means of two metrics, each with its seed spread as an error bar."""
        found = []
        for (group, _), style in zip(done, styles):
            x = stat(run.metrics.get(x_key) for run in group.completed)
            y = stat(run.metrics.get(y_key) for run in group.completed)
            if x.mean and y.mean is not None:
                found.append((x, y, style))
        if not always and len({x.mean for x, _, _ in found}) < 2:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        for x, y, style in found:
            ax.errorbar(
                x.mean, y.mean, xerr=x.std or 0.0, yerr=y.std or 0.0, linestyle="none", capsize=3,
                alpha=0.85, **style,
            )  # fmt: skip
        xs = [x.mean for x, _, _ in found]
        if xs and max(xs) > 10 * min(xs):
            ax.set_xscale("log")
        else:
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        save(fig, ax, file, xlabel, ylabel)

    points(
        "acc_vs_params.png", "params", "val/acc_best", "parameters", "best validation accuracy", always=True
    )
    points("acc_vs_gflops.png", "gflops_per_image", "test/acc", "GFLOPs per image", "test accuracy")
    points(
        "acc_vs_infer_speed.png", "infer_images_per_sec", "test/acc", "inference images/s", "test accuracy"
    )

    def lines(file: str, series: dict[str, list[tuple[float, Stat]]], style_of, xlabel: str) -> None:
        """One line per series through its points (x, accuracy ± std)."""
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, found in series.items():
            found = sorted(found, key=lambda point: point[0])
            x, y = [p[0] for p in found], [p[1].mean for p in found]
            spread = [p[1].std or 0.0 for p in found]
            ax.errorbar(x, y, yerr=spread, capsize=3, alpha=0.85, **{**style_of[name], "label": name})
        xs = [x for found in series.values() for x, _ in found]
        if max(xs) > 10 * min(xs):  # data shares such as 0.01, 0.1, 1
            ax.set_xscale("log")
        save(fig, ax, file, xlabel, "test accuracy")

    # Data efficiency: the groups that differ only in data.train_fraction are one line.
    fractions: dict[str, list[tuple[float, Stat]]] = {}
    style_of = {}
    for (group, name), style in zip(done, styles):
        acc = stat(run.metrics.get("test/acc") for run in group.completed)
        if acc.mean is not None:
            line = ", ".join(p for p in name.split(", ") if not p.startswith(f"{TRAIN_FRACTION}=")) or "all"
            fractions.setdefault(line, []).append((train_fraction(group), acc))
            style_of.setdefault(line, style)
    if len({x for found in fractions.values() for x, _ in found}) > 1:
        lines(
            "acc_vs_train_fraction.png",
            fractions,
            style_of,
            "share of the training split (data.train_fraction)",
        )

    sizes = {name: list(resolution_stats(group.completed).items()) for group, name in done}
    sizes = {name: found for name, found in sizes.items() if found}
    if sizes:
        style_of = {style["label"]: style for style in styles}
        lines("acc_vs_resolution.png", sizes, style_of, "test image size (px)")
    return written


def train_fraction(group: Group) -> float:
    """The share of its training split a group trained on (1 for runs from before the option)."""
    data = group.runs[0].config.get("data") or {}
    return float(data.get(TRAIN_FRACTION) or 1.0)

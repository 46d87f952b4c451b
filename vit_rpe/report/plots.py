"""The report's plots: one curve or point per seed group, with its ± std error bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vit_rpe.report.groups import Group, epoch_stats, stat

PLOTS = {
    "val_acc.png": "Validation accuracy per epoch",
    "epoch_time.png": "Training seconds per epoch",
    "acc_vs_params.png": "Best validation accuracy against parameters",
    "acc_vs_time.png": "Validation accuracy against training time",
}


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

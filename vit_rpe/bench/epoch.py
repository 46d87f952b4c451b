"""Seconds per training epoch of whole runs, as the CLI trains them, taking turns; and their ratios.

    python -m vit_rpe.bench epoch [--run "model=vit" --run "model=performer rpe=exp"] [--epochs 4]
                                  [--rounds 2] [--threads 1] [overrides ...]

Each run is ``train(cfg)`` with ``experiment=quickstart`` (the default ``--experiment``), the
run's own overrides, the common ones, ``trainer.max_epochs=--epochs`` and ``test=false``: the
config, datamodule, Lightning loop, callbacks and logger a user's command gets. The runs take
turns (``--rounds`` times each), so a slow spell on a shared machine hits all of them. Per
training epoch it reads the run's own record (tasks/run_record.py, from its last checkpoint):
the wall seconds of the training part (what metrics.json's ``seconds_per_epoch`` averages:
first batch to last, validation excluded) and the CPU seconds of the process over the same span,
which other jobs on the machine disturb far less. The first
epoch of every run warms up and is left out; the ratios are to the first run, of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from vit_rpe.bench.common import compose_train, environment, write_json
from vit_rpe.tasks.run_record import read_run_record


def run_epochs(overrides: list[str], output_dir: Path) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each training epoch but the first (a warm-up), from the run's own
    record, as its last checkpoint keeps it."""
    from vit_rpe.train import train

    train(compose_train(overrides, output_dir))
    epochs = read_run_record(output_dir / "checkpoints" / "last.ckpt")
    return [(epoch["seconds"], epoch["cpu_seconds"]) for epoch in epochs[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.bench epoch", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run",
        action="append",
        dest="runs",
        help='a run\'s own overrides, quoted (repeat for each run; default: "model=vit", '
        '"model=performer rpe=exp"); the ratios are to the first',
    )
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first warms up)")
    parser.add_argument("--rounds", type=int, default=2, help="times each run is repeated, in turns")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="folder for epoch.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    args.runs = args.runs or ["model=vit", "model=performer rpe=exp"]
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch of a run is a warm-up")
    if args.threads:
        torch.set_num_threads(args.threads)

    common = [f"experiment={args.experiment}", f"trainer.max_epochs={args.epochs}", "test=false"]
    epochs: dict[str, list[tuple[float, float]]] = {run: [] for run in args.runs}
    with tempfile.TemporaryDirectory(prefix="vit_rpe_bench_epoch_") as tmp:
        for round_ in range(args.rounds):
            for i, run in enumerate(args.runs):
                overrides = [*common, *run.split(), *args.overrides]
                epochs[run] += run_epochs(overrides, Path(tmp) / f"{round_}_{i}")

    result = {"environment": environment(torch.device("cpu")), "config": vars(args) | {"out": str(args.out)}}
    result["runs"] = {}
    for run, times in epochs.items():
        wall, cpu = [t[0] for t in times], [t[1] for t in times]
        result["runs"][run] = {
            "epochs": len(times),
            "wall_s_median": statistics.median(wall),
            "wall_s_min": min(wall),
            "cpu_s_median": statistics.median(cpu),
            "cpu_s_min": min(cpu),
        }
    first = result["runs"][args.runs[0]]
    print()
    for run, record in result["runs"].items():
        record["wall_ratio"] = record["wall_s_median"] / first["wall_s_median"]
        record["cpu_ratio"] = record["cpu_s_median"] / first["cpu_s_median"]
        print(
            f"{run:28s} {record['epochs']} epochs: wall {record['wall_s_median']:.2f} s/epoch "
            f"(min {record['wall_s_min']:.2f}, {record['wall_ratio']:.2f}x), "
            f"CPU {record['cpu_s_median']:.2f} s/epoch "
            f"(min {record['cpu_s_min']:.2f}, {record['cpu_ratio']:.2f}x)"
        )
    threads = f"_threads{args.threads}" if args.threads else ""  # --threads 1 and 2 keep their own files
    path = args.out / f"epoch_{args.experiment}{threads}.json"
    write_json(path, result)
    print(f"wrote {path}")
    return 0

"""Two runs on one machine: a training run alone, then two started together, per thread setting.

    python -m vit_rpe.bench share [--threads null 1] [--wait PASSIVE ACTIVE] [--out docs/bench]
                                  [overrides ...]

For each choice of ``threads=`` (null: the default, the CPUs this process may use) and OpenMP
wait policy (``OMP_WAIT_POLICY``), it runs ``python -m vit_rpe.train experiment=quickstart``
(``--experiment``) as a user would, once alone and then twice at the same time, and records each
run's wall time (the whole command: start-up, training, test) and its seconds per epoch
(metrics.json). The slowdown of a run beside another is its wall time over the lone run's; the bar
(issue 22) is 2.5x. Writes ``share.json`` under ``--out`` and prints the table docs/benchmarks.md
keeps under "Sharing a machine". Run it on an otherwise idle machine: about 3 quickstarts' time
per choice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vit_rpe.bench.common import environment, write_json
from vit_rpe.utils.threads import usable_cpus

BAR = 2.5


def start(overrides: list[str], threads: str, wait: str, run_dir: Path) -> tuple[subprocess.Popen, float]:
    """``python -m vit_rpe.train`` in its own process with this thread setting and wait policy."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # threads=null must decide
    env["OMP_WAIT_POLICY"] = wait
    command = [
        sys.executable,
        "-m",
        "vit_rpe.train",
        *overrides,
        f"threads={threads}",
        f"hydra.run.dir={run_dir}",
    ]
    log = (run_dir.parent / f"{run_dir.name}.log").open("w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), time.perf_counter()


def finish(runs: list[tuple[subprocess.Popen, float]], run_dirs: list[Path]) -> list[dict]:
    """Wait for every run; its wall seconds and seconds per epoch."""
    results = []
    for (process, began), run_dir in zip(runs, run_dirs, strict=True):
        if process.wait() != 0:
            log = (run_dir.parent / f"{run_dir.name}.log").read_text()[-2000:]
            raise RuntimeError(f"python -m vit_rpe.train failed in {run_dir}:\n{log}")
        wall = time.perf_counter() - began
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results.append({"wall_s": wall, "seconds_per_epoch": metrics.get("seconds_per_epoch")})
    return results


def measure(overrides: list[str], threads: str, wait: str, folder: Path) -> dict:
    alone_dir = folder / "alone"
    alone = finish([start(overrides, threads, wait, alone_dir)], [alone_dir])[0]
    pair_dirs = [folder / "pair0", folder / "pair1"]
    pair = finish([start(overrides, threads, wait, d) for d in pair_dirs], pair_dirs)
    slowdowns = [run["wall_s"] / alone["wall_s"] for run in pair]
    return {"threads": threads, "wait": wait, "alone": alone, "pair": pair, "worst_slowdown": max(slowdowns)}


def table(records: list[dict]) -> str:
    lines = [
        "| threads | OMP_WAIT_POLICY | alone: wall s (s / epoch) | two at once: wall s each (s / epoch) "
        "| slowdown (bar 2.5x) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in records:
        each = ", ".join(
            f"{p['wall_s']:.0f} ({p['seconds_per_epoch'] or float('nan'):.2f})" for p in r["pair"]
        )
        alone = f"{r['alone']['wall_s']:.0f} ({r['alone']['seconds_per_epoch'] or float('nan'):.2f})"
        mark = "**" if r["worst_slowdown"] <= BAR else ""  # bold: within the bar
        slowdown = f"{mark}{r['worst_slowdown']:.2f}x{mark}"
        lines.append(f"| {r['threads']} | {r['wait']} | {alone} | {each} | {slowdown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.bench share", description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument(
        "--threads", nargs="+", default=["null", "1"], help="threads= values (null: the usable CPUs)"
    )
    parser.add_argument("--wait", nargs="+", default=["PASSIVE", "ACTIVE"], help="OMP_WAIT_POLICY values")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="folder for share.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    overrides = [f"experiment={args.experiment}", *args.overrides]

    records = []
    with tempfile.TemporaryDirectory(prefix="vit_rpe_bench_share_") as tmp:
        for threads in args.threads:
            for wait in args.wait:
                folder = Path(tmp) / f"threads{threads}_{wait}"
                folder.mkdir()
                records.append(measure(overrides, threads, wait, folder))
                print(table(records[-1:]).splitlines()[-1], flush=True)

    result = {
        "environment": environment(torch.device("cpu")) | {"usable_cpus": usable_cpus()},
        "config": {"overrides": overrides, "threads": args.threads, "wait": args.wait, "bar": BAR},
        "records": records,
    }
    write_json(args.out / "share.json", result)
    print(f"\n{table(records)}\n\nwrote {args.out / 'share.json'}")
    return 0

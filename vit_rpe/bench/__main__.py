"""Dispatch ``python -m vit_rpe.bench <command> [options]`` to ``vit_rpe.bench.<command>.main``.

Adding a benchmark is adding a module with a ``main(argv)`` and a line in SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "attention": "time and memory of every kernel x RPE x impl against grid size",
    "model": "training step time of models of one size (ours, timm's), in turns, and their ratios",
    "epoch": "seconds per training epoch of whole CLI runs (quickstart by default), in turns",
    "favor": "Performer attention under a mask: the C kernel against PyTorch, per layer shape",
    "data": "data loading throughput",
    "gpu": "one bf16 epoch of every model x RPE through train(): images/s and peak memory",
    "share": "a quickstart alone, then two at once, per thread count and OpenMP wait policy",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vit_rpe.bench",
        description="Benchmarks; `python -m vit_rpe.bench <command> --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {name:10s} {text}" for name, text in SUBCOMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(SUBCOMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options of the command")
    ns = parser.parse_args(argv)
    try:
        module = importlib.import_module(f"vit_rpe.bench.{ns.command}")
    except ModuleNotFoundError as err:
        if err.name != f"vit_rpe.bench.{ns.command}":
            raise
        parser.error(
            f"the {ns.command!r} benchmark is not installed (no module vit_rpe/bench/{ns.command}.py)"
        )
    return module.main(ns.args) or 0


if __name__ == "__main__":
    sys.exit(main())

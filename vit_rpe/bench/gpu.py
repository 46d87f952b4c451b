"""GPU check: one short epoch of every model x RPE through the real training path, in bf16.

    python -m vit_rpe.bench gpu [--data mnist] [--batches 50] [--out docs/benchmarks.md]
    python -m vit_rpe.bench gpu --cpu            # the same code path on CPU at tiny size (tests)

Each cell is ``train(cfg)`` with ``trainer=gpu`` (bf16-mixed), so it checks what users run:
config composition, the datamodule's device transform, the kernels, the task, Lightning. It
records training images/s (the task's own accounting), the peak CUDA memory of the run, and
whether the loss stayed finite, and writes the table into the ``gpu-check`` section of
``--out`` (between its markers, leaving the rest of the file alone).
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
import time
from pathlib import Path

import torch

from vit_rpe.bench.common import compose_train

MODELS = ("vit", "performer", "linear")
RPES = ("none", "general", "exp", "poly", "rope")
START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"
TINY = ("model.net.embed_dim=32", "model.net.depth=1", "model.net.num_heads=2")


def cell_overrides(model: str, rpe: str, args) -> list[str]:
    quiet = ["logger=none", "callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]
    limits = [
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.batches}",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        "test=false",
    ]
    hardware = ["trainer=cpu", *TINY] if args.cpu else ["trainer=gpu", "trainer.precision=bf16-mixed"]
    return [f"model={model}", f"rpe={rpe}", f"data={args.data}", *hardware, *limits, *quiet, *args.overrides]


def measure(model: str, rpe: str, args, root: Path) -> dict:
    from vit_rpe.train import train

    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        metrics = train(compose_train(cell_overrides(model, rpe, args), root / f"{model}_{rpe}"))
        error = ""
    except Exception as err:  # one failing cell is a result, not the end of the check
        metrics, error = {}, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    loss = metrics.get("train/loss", float("nan"))
    return {
        "model": model,
        "rpe": rpe,
        "images_per_sec": metrics.get("train_images_per_sec"),
        "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "train_loss": loss,
        "finite": bool(metrics) and math.isfinite(loss),
        "seconds": time.perf_counter() - start,
        "error": error,
    }


def table(rows: list[dict], header: str) -> str:
    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) and v is not None else "-"

    lines = [
        header,
        "",
        "| model | rpe | images/s | peak memory (MiB) | train loss | ok |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = "yes" if r["finite"] else f"no {r['error']}".strip()
        lines.append(
            f"| {r['model']} | {r['rpe']} | {num(r['images_per_sec'], '.0f')} "
            f"| {num(r['peak_mem_mib'], '.0f')} | {num(r['train_loss'], '.3f')} | {ok} |"
        )
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    """Replace the text between the gpu-check markers (append the section when it is missing)."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    section = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## GPU check (`python -m vit_rpe.bench gpu`)\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.bench gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="mnist", help="data config (mnist, digits, ...)")
    parser.add_argument("--batches", type=int, default=50, help="training batches in the epoch")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--rpes", nargs="+", default=list(RPES))
    parser.add_argument("--cpu", action="store_true", help="CPU, fp32, tiny models: checks the code path")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run it on a GPU machine, or pass --cpu to check the code path")

    rows = []
    with tempfile.TemporaryDirectory(prefix="vit_rpe_gpu_check_") as tmp:
        for model in args.models:
            for rpe in args.rpes:
                rows.append(measure(model, rpe, args, Path(tmp)))
                r = rows[-1]
                print(
                    f"{model:10s} {rpe:8s} images/s={r['images_per_sec']} peak MiB={r['peak_mem_mib']} "
                    f"finite={r['finite']} {r['error']}",
                    flush=True,
                )
    device = "CPU (--cpu, tiny)" if args.cpu else torch.cuda.get_device_name()
    header = (
        f"{device}, torch {torch.__version__}, data={args.data}, {args.batches} training batches, "
        f"{'fp32' if args.cpu else 'bf16-mixed'}; command: `python -m vit_rpe.bench gpu "
        f"{' '.join(argv or [])}`".rstrip()
    )
    write_section(args.out, table(rows, header))
    print(f"wrote {args.out}")
    return 0 if all(r["finite"] for r in rows) else 1

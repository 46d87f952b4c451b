"""Forward + backward of Performer attention under a mask: the C kernel against PyTorch.

    python -m vit_rpe.bench favor [--cases quickstart mnist ...] [--threads 1] [--min-time 1]

For each case, one after the other: ``NativeMaskedFavorAttention`` (favor.c, built on first use),
``MaskedFavorAttention`` (the same numbers in PyTorch ops) and, for scale, softmax attention
(SDPA) on the same q, k, v. The first three cases are the layers the default recipes train
(data=digits through the quickstart, data=mnist, data=cifar10); the others probe the sizes where
native.py stops using the kernel (MAX_TOKENS, MAX_HEAD_DIM, MAX_FEATURES).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from vit_rpe.bench.common import environment, time_it, write_json
from vit_rpe.models import native
from vit_rpe.models.attention import default_nb_features, orthogonal_gaussian
from vit_rpe.models.fused import MaskedFavorAttention, NativeMaskedFavorAttention

# name: (batch, heads, tokens, head dim, features); features None = the default, d ln d.
CASES = {
    "quickstart": (32, 4, 16, 24, None),  # digits: 4x4 grid, dim 96, 4 heads
    "mnist": (128, 2, 49, 32, None),  # 7x7 grid, dim 64, 2 heads
    "cifar10": (128, 12, 65, 16, None),  # 8x8 grid + cls, dim 192, 12 heads (tiny_imagenet too)
    "tokens128": (16, 4, 128, 32, None),
    "dim64_m128": (16, 4, 65, 64, 128),
    "dim48_m185": (16, 4, 100, 48, 185),
    "dim64_m256": (16, 4, 64, 64, 256),
}


def inputs(batch, heads, tokens, head_dim, features):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=g).requires_grad_() for _ in range(3))
    mask = torch.rand(heads, tokens, tokens, generator=g).requires_grad_()
    return q, k, v, orthogonal_gaussian(features, head_dim, g), mask, torch.randn_like(q)


def passes(lib, q, k, v, w, mask, grad) -> dict:
    """The forward + backward passes to time, the C kernel's first where it was built."""
    steps = (
        {} if lib is None else {"c": lambda: NativeMaskedFavorAttention.apply(lib, q, k, v, w, mask, 1e-6)}
    )
    steps["pytorch"] = lambda: MaskedFavorAttention.apply(q, k, v, w, mask, 1e-6)
    steps["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v)
    return {key: lambda forward=forward: forward().backward(grad) for key, forward in steps.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.bench favor", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of repeats per timing")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="folder for favor.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")

    results = {}
    for name in args.cases:
        batch, heads, tokens, head_dim, features = CASES[name]
        features = features or default_nb_features(head_dim)
        q, k, v, w, mask, grad = inputs(batch, heads, tokens, head_dim, features)
        lib = native.favor_kernel(tokens, head_dim, features)
        steps = passes(lib, q, k, v, w, mask, grad)
        times = {
            key: time_it(step, cpu, min_time=args.min_time, max_reps=1000)["time_s"]
            for key, step in steps.items()
        }
        record = {
            "shape": dict(batch=batch, heads=heads, tokens=tokens, head_dim=head_dim, features=features)
        }
        record |= {f"{key}_ms": 1e3 * seconds for key, seconds in times.items()}
        record["used"] = native.favor_kernel_for(q, w) is not None
        if lib is not None:
            record["pytorch_over_c"] = times["pytorch"] / times["c"]
        results[name] = record
        line = "  ".join(f"{key} {1e3 * seconds:8.2f} ms" for key, seconds in times.items())
        speedup = f"C {record['pytorch_over_c']:.2f}x faster" if lib is not None else "C kernel not built"
        print(f"{name:12s} {line}  ({speedup}; used by Performer when opted in: {record['used']})")

    threads = f"_threads{args.threads}" if args.threads else ""
    path = args.out / f"favor{threads}.json"
    write_json(
        path,
        {"environment": environment(cpu), "config": vars(args) | {"out": str(args.out)}, "cases": results},
    )
    print(f"wrote {path}")
    return 0

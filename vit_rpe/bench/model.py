"""Training throughput (images/s) of our VisionTransformer against timm's at the same size.

    python -m vit_rpe.bench model [--batch 64] [--rounds 5] [--steps 3] [--attention softmax --rpe none]

The default is seed 003's CIFAR-10 ViT: 32x32 input, patch 2 (16x16 grid, 257 tokens), dim 128,
depth 4, 8 heads, MLP ratio 4, 10 classes (timm: 829,322 parameters). A step is forward,
cross-entropy, backward and an AdamW update. The models take turns (``--rounds`` rounds of
``--steps`` steps each) so that a slow spell on a shared machine hits both; the best round counts.
timm's model is only built for attention=softmax, rpe=none (it has neither RPE nor our kernels).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vit_rpe.bench.common import environment, write_json
from vit_rpe.models import VisionTransformer

SEED003 = dict(img_size=32, patch_size=2, embed_dim=128, depth=4, num_heads=8, mlp_ratio=4.0, num_classes=10)


def build(name: str, args) -> torch.nn.Module:
    if name == "timm":
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        return TimmViT(**SEED003, qkv_bias=True)
    return VisionTransformer(
        **SEED003,
        attention=args.attention,
        rpe=args.rpe,
        rpe_kwargs={"impl": args.impl},
    )


def train_steps(model, opt, images, labels, steps: int, device) -> float:
    """Seconds for ``steps`` optimisation steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.bench model", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per model per round")
    parser.add_argument("--attention", default="softmax", help="our kernel (softmax, performer, linear)")
    parser.add_argument("--rpe", default="none", help="our RPE family (none, general, exp, poly)")
    parser.add_argument("--impl", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=Path("docs/bench"), help="folder for model[_threadsN].json"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 rounds of 1 step (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.steps = 8, 2, 1
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = ["ours", "timm"] if (args.attention, args.rpe) == ("softmax", "none") else ["ours"]
    models = {name: build(name, args).to(device).train() for name in names}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    for name in names:  # warm-up: allocator, kernels, optimizer state
        train_steps(models[name], opts[name], images, labels, 1, device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            seconds[name].append(train_steps(models[name], opts[name], images, labels, args.steps, device))

    result = {"environment": environment(device), "config": SEED003 | vars(args) | {"out": str(args.out)}}
    for name in names:
        best = min(seconds[name])
        result[name] = {
            "params": sum(p.numel() for p in models[name].parameters()),
            "images_per_s": args.batch * args.steps / best,
            "images_per_s_median": args.batch * args.steps / sorted(seconds[name])[len(seconds[name]) // 2],
        }
        print(
            f"{name:5s} {result[name]['params']:>9,d} params  {result[name]['images_per_s']:8.1f} images/s "
            f"(median {result[name]['images_per_s_median']:.1f})"
        )
    if "timm" in result:
        result["speedup"] = result["ours"]["images_per_s"] / result["timm"]["images_per_s"]
        print(f"ours / timm: {result['speedup']:.2f}x")
    tag = "" if names == ["ours", "timm"] else f"_{args.attention}_{args.rpe}"
    tag += f"_threads{args.threads}" if args.threads else ""  # --threads 1 and 2 keep their own files
    write_json(args.out / f"model{tag}.json", result)
    print(f"wrote {args.out / f'model{tag}.json'}")
    return 0

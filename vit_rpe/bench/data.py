"""Images/s of the data side alone, per datamodule, against the training speed of seed 003's ViT.

    python -m vit_rpe.bench data [--out docs/bench] [--quick] [--device cpu|cuda]
                                 [--cifar-dir D] [--tiny-dir D] [--tiny-hf P] [--folder-dir D] [--hf-path P]

The data side is what a training step waits for: the DataLoader (gather from the uint8 cache,
or PIL decoding in workers when streaming) plus the device transform in training mode (crop,
flip, normalise; mixup/cutmix where asked), with the batch moved to ``--device``. Each
datamodule runs on generated data in its real on-disk format in a temporary folder, unless a
real data folder is given. The reference is seed 003's ViT (32x32, 2x2 patches, dim 128, depth 4,
8 heads) training on the same device at batch 128: the data side should be >= 20x faster.
Writes data.json under ``--out`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from vit_rpe.bench.common import environment, write_json
from vit_rpe.data import (
    CIFAR10DataModule,
    HFImageDataModule,
    ImageFolderDataModule,
    TinyImageNetDataModule,
)
from vit_rpe.data import synthetic as fx
from vit_rpe.models import VisionTransformer


def vit_train_rate(device: torch.device, batch: int, steps: int) -> float:
    """Training images/s of seed 003's ViT: forward, backward and an AdamW step at batch ``batch``."""
    torch.manual_seed(0)
    net = VisionTransformer(
        img_size=32, patch_size=2, embed_dim=128, depth=4, num_heads=8, mlp_ratio=4, num_classes=10
    ).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    step()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attach_trainer(dm, device: torch.device) -> None:
    """What the datamodule reads of a Lightning trainer, in training mode."""
    dm.trainer = SimpleNamespace(
        training=True, strategy=SimpleNamespace(root_device=device), global_rank=0, current_epoch=0
    )


def data_rate(dm, device: torch.device, epochs: int, max_batches: int) -> tuple[float, float]:
    """(seconds to set up: decode + cache or read the cache, images/s of loader + device transform)."""
    attach_trainer(dm, device)
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    images = 0
    start = None
    for epoch in range(epochs + 1):  # epoch 0 warms up (workers start, pages fault in)
        if epoch == 1:
            sync(device)
            start = time.perf_counter()
        for i, batch in enumerate(loader):
            batch = (batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True))
            x, _ = dm.on_after_batch_transfer(batch, 0)
            if epoch >= 1:
                images += x.shape[0]
            if i + 1 >= max_batches:
                break
    sync(device)
    return setup_s, images / (time.perf_counter() - start) if start is not None else 0.0


def build_cases(args, root: Path) -> list[tuple[str, str, callable]]:
    """(name, what it exercises, factory) for every datamodule and option worth timing."""
    n = 2000 if args.quick else 10000
    common = dict(batch_size=args.batch_size, num_workers=args.num_workers, seed=0, download=False)
    common["val_size"] = 0.1 if args.cifar_dir is None else 5000
    # fixtures are written when a case first needs them, so --only skips the others
    cifar = cache(lambda: args.cifar_dir or fx.write_cifar10(root / "cifar", n_train=n, n_test=n // 5).parent)
    per_class = 5 if args.quick else 25
    tiny = cache(lambda: args.tiny_dir or fx.write_tiny_imagenet(root / "tiny", per_class=per_class).parent)
    tiny_hf = cache(
        lambda: (
            args.tiny_hf
            or fx.write_hf_parquet(
                root / "tiny_hf", fx.tiny_wnids(), {"train": 200 * per_class, "valid": 200}
            )
        )
    )
    folder = cache(lambda: args.folder_dir or fx.write_image_folder(root / "folder", per_class=n // 30))
    hf = cache(
        lambda: (
            args.hf_path
            or fx.write_hf_parquet(root / "hf", ["a", "b", "c", "d"], {"train": n // 5, "test": 200})
        )
    )
    tiny_val = 0.1 if args.tiny_dir is None else 10000
    no_dl = {k: v for k, v in common.items() if k not in ("download", "val_size")}
    cifar_aug = dict(crop_padding=4, hflip=0.5)
    cases = [
        ("cifar10", "cache, crop+flip", lambda: CIFAR10DataModule(cifar(), **common, **cifar_aug)),
        (
            "cifar10",
            "cache, crop+flip+mixup+cutmix",
            lambda: CIFAR10DataModule(cifar(), **common, **cifar_aug, mixup=0.8, cutmix=1.0),
        ),
        (
            "cifar10",
            "cache, crop+flip, resize to 224",
            lambda: CIFAR10DataModule(cifar(), **common, **cifar_aug, image_size=224),
        ),
        (
            "cifar10",
            "cache, RandAugment m9 (CPU, per image)",
            lambda: CIFAR10DataModule(cifar(), **common, **cifar_aug, randaugment="rand-m9-mstd0.5"),
        ),
        (
            "tiny_imagenet",
            "folder, cache, crop+flip",
            lambda: TinyImageNetDataModule(
                tiny(), source="folder", val_size=tiny_val, crop_padding=8, hflip=0.5, **no_dl
            ),
        ),
        (
            "tiny_imagenet",
            "folder, streaming JPEG decode",
            lambda: TinyImageNetDataModule(
                tiny(), source="folder", val_size=tiny_val, crop_padding=8, hflip=0.5, max_cache_gb=0, **no_dl
            ),
        ),
        (
            "tiny_imagenet",
            "hf parquet, cache, crop+flip",
            lambda: TinyImageNetDataModule(
                root / "tiny_hf_dm",
                source="hf",
                hf_path=str(tiny_hf()),
                val_size=tiny_val,
                crop_padding=8,
                hflip=0.5,
                **no_dl,
            ),
        ),
        (
            "image_folder",
            "cache (64 px), flip",
            lambda: ImageFolderDataModule(folder(), image_size=64, hflip=0.5, **no_dl),
        ),
        (
            "image_folder",
            "streaming decode+resize",
            lambda: ImageFolderDataModule(folder(), image_size=64, hflip=0.5, max_cache_gb=0, **no_dl),
        ),
        (
            "hf",
            "parquet, cache (64 px), flip",
            lambda: HFImageDataModule(root / "hf_dm", hf_path=str(hf()), image_size=64, hflip=0.5, **no_dl),
        ),
    ]
    if args.device == "cuda":
        cases.insert(
            1,
            (
                "cifar10",
                "on_device, crop+flip",
                lambda: CIFAR10DataModule(cifar(), **common, **cifar_aug, on_device=True),
            ),
        )
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vit_rpe.bench data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--max-batches", type=int, default=60, help="batches per epoch at most")
    parser.add_argument("--vit-steps", type=int, default=5)
    parser.add_argument("--vit-batch", type=int, default=128, help="batch of the reference ViT")
    parser.add_argument("--quick", action="store_true", help="smaller generated datasets")
    parser.add_argument("--only", nargs="*", help="datamodule names to run (default: all)")
    parser.add_argument("--cifar-dir", type=Path, help="a real data_dir with cifar-10-batches-py")
    parser.add_argument("--tiny-dir", type=Path, help="a real data_dir with tiny-imagenet-200")
    parser.add_argument("--tiny-hf", help="hub id or local copy of zh-plus/tiny-imagenet")
    parser.add_argument("--folder-dir", type=Path, help="a real image folder (root/<class>/*.jpg)")
    parser.add_argument("--hf-path", help="a real HF image dataset (hub id or local copy)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)

    vit = vit_train_rate(device, args.vit_batch, args.vit_steps)
    print(
        f"seed-003 ViT training on {device}: {vit:,.0f} images/s (batch {args.vit_batch}); "
        f"target: {20 * vit:,.0f}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="vit_rpe_bench_data_") as tmp:
        for name, what, make in build_cases(args, Path(tmp)):
            if args.only and name not in args.only:
                continue
            first_s, _ = data_rate(make(), device, 0, 1)  # decode and write the cache (or just scan)
            setup_s, rate = data_rate(make(), device, args.epochs, args.max_batches)
            row = dict(
                datamodule=name,
                case=what,
                first_setup_s=first_s,
                setup_s=setup_s,
                images_per_s=rate,
                x_vit=rate / vit,
            )
            rows.append(row)
            print(
                f"{name:14s} {what:42s} first setup {first_s:6.2f}s  setup {setup_s:5.2f}s  "
                f"{rate:10,.0f} img/s  {rate / vit:6.1f}x ViT"
            )
    write_json(
        args.out / "data.json",
        {
            "env": environment(device),
            "vit_images_per_s": vit,
            "rows": rows,
            "args": {k: str(v) for k, v in vars(args).items()},
        },
    )
    print("\n| datamodule | case | first setup (s) | cached setup (s) | images/s | x ViT training |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['datamodule']} | {r['case']} | {r['first_setup_s']:.2f} | {r['setup_s']:.2f} | "
            f"{r['images_per_s']:,.0f} | {r['x_vit']:.0f}x |"
        )
    return 0

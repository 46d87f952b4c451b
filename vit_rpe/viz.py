"""See what a ViT learned: each layer's RPE mask per head, and attention maps for one image.

    python -m vit_rpe.viz --ckpt path/to/last.ckpt [--image img.png] [--out dir]
    python -m vit_rpe.viz ckpt_path=path/to/last.ckpt            (Hydra-style key=value works too)

The plotting functions take any backbone built from our MultiHeadSelfAttention modules (the
VisionTransformer) and an image tensor, so they work without Lightning; the command loads the
backbone from a ``vit_rpe.tasks.ImageClassifier`` checkpoint. Nothing in the model changes: the
attention maps come from forward pre-hooks that catch each attention layer's input and ask the
layer for the dense matrix its kernel applies (``MultiHeadSelfAttention.attention_map``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def hydra_style(argv: list[str]) -> list[str]:
    """Accept ``ckpt_path=x out=y`` as well as ``--ckpt x --out y``."""
    aliases = {"ckpt_path": "ckpt", "checkpoint": "ckpt"}
    out = []
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            out += [f"--{aliases.get(key, key).replace('_', '-')}", value]
        else:
            out.append(arg)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.viz", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="an ImageClassifier checkpoint (.ckpt)")
    parser.add_argument("--image", default=None, help="an image file; default a scikit-learn digit")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the PNGs (default: <ckpt dir>/viz)"
    )
    parser.add_argument(
        "--query", type=int, default=None, help="query token (default cls, or the centre patch)"
    )
    return parser.parse_args(hydra_style(argv))


if __name__ == "__main__":  # option mistakes answer before torch and matplotlib are imported
    parse_args(sys.argv[1:])

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from vit_rpe.models.attention import MultiHeadSelfAttention  # noqa: E402
from vit_rpe.models.rpe import RelativePositionMask  # noqa: E402
from vit_rpe.utils.run import exit_on_user_error  # noqa: E402


def attention_layers(model: nn.Module) -> list[tuple[str, MultiHeadSelfAttention]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MultiHeadSelfAttention)]


def rpe_layers(model: nn.Module) -> list[tuple[str, RelativePositionMask]]:
    return [(name, m.rpe) for name, m in attention_layers(model) if isinstance(m.rpe, RelativePositionMask)]


@torch.no_grad()
def attention_maps(model: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """[H, L, L] attention of every layer for one image [C, H, W] (eval mode, the model untouched)."""
    inputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        for _, layer in attention_layers(model)
    ]
    was_training = model.training
    try:
        model.eval()
        model(image[None])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [layer.attention_map(x)[0] for (_, layer), x in zip(attention_layers(model), inputs)]


def grid_of(model: nn.Module, tokens: int) -> tuple[tuple[int, int], int]:
    """(grid size, number of prefix tokens) of a backbone, from its attributes or the token count."""
    grid = getattr(model, "grid_size", None) or getattr(
        getattr(model, "patch_embed", None), "grid_size", None
    )
    if grid is None:
        side = math.isqrt(tokens)
        grid = (side, side)
    return tuple(grid), tokens - grid[0] * grid[1]


@torch.no_grad()
def plot_rpe_masks(model: nn.Module, path: str | Path) -> Path | None:
    """One panel per layer (rows) and head (columns): M as a function of the offset (dx, dy).

    Titles carry the cls scalar exp(cls_logit) when there is a cls token. None without RPE.
    """
    layers = rpe_layers(model)
    if not layers:
        return None
    heads = max(rpe.num_heads for _, rpe in layers)
    fig, axes = plt.subplots(len(layers), heads, figsize=(2.2 * heads + 1, 2.2 * len(layers)), squeeze=False)
    for row, (name, rpe) in enumerate(layers):
        table = rpe.mask_offsets().float().cpu()  # [H, 2Hg-1, 2Wg-1]
        hg, wg = rpe.grid_size
        cls = rpe.cls_logit.exp().float().cpu() if rpe.cls_logit is not None else None
        for h in range(heads):
            ax = axes[row, h]
            if h >= rpe.num_heads:
                ax.axis("off")
                continue
            im = ax.imshow(
                table[h], extent=(-(wg - 1) - 0.5, wg - 0.5, hg - 0.5, -(hg - 1) - 0.5), cmap="viridis"
            )
            title = f"{name.removesuffix('.attn')} h{h}"
            if cls is not None:
                title += f"\ncls {cls[h].item():.2f}"
            ax.set_title(title, fontsize=7)
            ax.tick_params(labelsize=6)
            if row == len(layers) - 1:
                ax.set_xlabel("dx", fontsize=7)
            if h == 0:
                ax.set_ylabel("dy", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=5)
    family = type(layers[0][1]).family
    fig.suptitle(f"learned RPE masks M(dy, dx) (rpe={family}, distance={layers[0][1].distance})", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


@torch.no_grad()
def plot_attention_maps(
    model: nn.Module, image: torch.Tensor, path: str | Path, query: int | None = None
) -> Path:
    """The image, then per layer (rows) and head (columns) one query's attention over the grid.

    ``query`` is a token index; default the cls token, or the centre patch without one.
    """
    maps = attention_maps(model, image)
    tokens = maps[0].shape[-1]
    (hg, wg), prefix = grid_of(model, tokens)
    if query is None:
        query = 0 if prefix else (hg // 2) * wg + wg // 2
    heads = maps[0].shape[0]
    fig, axes = plt.subplots(
        len(maps), heads + 1, figsize=(2.0 * (heads + 1), 2.0 * len(maps)), squeeze=False
    )
    shown = image.float().cpu()
    shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp_min(1e-8)
    for row, attn in enumerate(maps):
        ax = axes[row, 0]
        ax.imshow(shown[0] if shown.shape[0] == 1 else shown[:3].permute(1, 2, 0), cmap="gray")
        if query >= prefix:
            qy, qx = divmod(query - prefix, wg)
            ax.scatter(
                [(qx + 0.5) * shown.shape[-1] / wg - 0.5],
                [(qy + 0.5) * shown.shape[-2] / hg - 0.5],
                c="r",
                s=12,
            )
        ax.set_title(f"layer {row}", fontsize=7)
        ax.axis("off")
        for h in range(heads):
            grid = attn[h, query, prefix:].float().cpu().reshape(hg, wg)
            ax = axes[row, h + 1]
            ax.imshow(grid, cmap="magma")
            title = f"h{h}"
            if prefix:
                title += f" (cls {attn[h, query, :prefix].sum().item():.2f})"
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    who = "cls token" if query < prefix else f"token {query}"
    fig.suptitle(f"attention of the {who} over the patch grid", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_backbone(ckpt: str | Path) -> nn.Module:
    """The backbone (``.net``) of an ImageClassifier checkpoint, on CPU, in eval mode.

    Only the from-scratch models (``model=vit``, ``performer``, ``linear``: a VisionTransformer)
    have the attention layers and RPE masks drawn here; a pretrained backbone is refused by name.
    """
    from hydra.utils import get_class

    from vit_rpe.models.vit import VisionTransformer
    from vit_rpe.tasks import ImageClassifier
    from vit_rpe.utils.checkpoint import read_task_checkpoint
    from vit_rpe.utils.errors import CheckpointError

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise CheckpointError(f"no checkpoint at {ckpt}: pass --ckpt path/to/file.ckpt")
    target = read_task_checkpoint(ckpt)["hyper_parameters"]["net"].get("_target_", "?")
    if not issubclass(get_class(target), VisionTransformer):
        raise CheckpointError(
            f"{ckpt} holds a {target} backbone: viz draws the attention and RPE masks of the from-scratch "
            "models (model=vit, model=performer, model=linear), not of pretrained timm or HuggingFace ones"
        )
    return ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").net.eval()


def load_image(path: str | Path | None, img_size: tuple[int, int], in_chans: int) -> torch.Tensor:
    """[C, H, W] in [0, 1]: a file resized to the model's input, or a digit from scikit-learn.

    The datamodule's normalisation is not in the checkpoint, so the pixels are only scaled to
    [0, 1]; the maps show the structure the model learned, not calibrated predictions.
    """
    import torch.nn.functional as F

    if path is None:
        from sklearn.datasets import load_digits

        image = torch.tensor(load_digits().images[0], dtype=torch.float32)[None] / 16.0  # [1, 8, 8]
    else:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        from vit_rpe.utils.errors import DataError

        try:
            pil = Image.open(path).convert("L" if in_chans == 1 else "RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            raise DataError(
                f"--image {path} cannot be read as an image ({err}): give a PNG or JPEG file"
            ) from None
        image = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
    image = F.interpolate(image[None], size=img_size, mode="bilinear", align_corners=False)[0]
    if image.shape[0] != in_chans:
        image = image.mean(0, keepdim=True).expand(in_chans, -1, -1)
    return image.contiguous()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return exit_on_user_error(draw, args)


def draw(args: argparse.Namespace) -> int:
    """The attention maps (and RPE masks) of ``args.ckpt`` for ``args.image``, as PNGs."""
    model = load_backbone(args.ckpt)
    out = args.out or Path(args.ckpt).parent / "viz"
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    in_chans = next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    if img_size is None:
        raise SystemExit("cannot tell the backbone's input size: it needs a patch_embed.img_size")
    image = load_image(args.image, img_size, in_chans)
    written = [plot_attention_maps(model, image, out / "attention_maps.png", args.query)]
    masks = plot_rpe_masks(model, out / "rpe_masks.png")
    if masks is None:
        print("the model has no relative position encoding: no mask plot")
    else:
        written.append(masks)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

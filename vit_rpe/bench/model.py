"""Training throughput (images/s) of models of one size, taking turns, and their step-time ratios.

    python -m vit_rpe.bench model [--size seed003] [--models softmax timm] [--threads 1]
    python -m vit_rpe.bench model --size quickstart        # softmax ViT against Performer + exp RPE

Sizes, their networks read from the config tree: ``seed003`` is seed 003's CIFAR-10 ViT
(model/net/seed003.yaml at 32x32 RGB, patch 2: a 16x16 grid and a cls token, dim 128, depth 4, 8 heads,
MLP ratio 4; batch 64); ``quickstart`` is ``experiment=quickstart``'s ViT (recipe/digits.yaml at 8x8,
patch 2: 16 tokens, mean pooling, dim 96, depth 4, 4 heads, MLP ratio 2; batch
32). A model is ``timm`` (timm's VisionTransformer, softmax without RPE, at the seed-003 size) or
ours named ``attention[+rpe]`` (``softmax``, ``performer+exp``, ...), or ``performer+exp/floor``:
Performer + exp with its attention replaced by ``FavorFloor``, the matrix products and the
exponential that any exact arrangement of it must compute, and nothing else (so no step computing
the same numbers with PyTorch ops can be faster). A step is forward,
cross-entropy, backward and an AdamW update on random images. The models take turns
(``--rounds`` rounds of ``--steps`` steps each), so a slow spell on a shared machine hits them
all; the best round counts, and the ratios of every model's step time to the first model's are
printed (best rounds and median rounds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from vit_rpe.bench.common import environment, write_json
from vit_rpe.models import VisionTransformer
from vit_rpe.models.attention import MultiHeadSelfAttention, PerformerAttention
from vit_rpe.utils.run import CONF_DIR

# A size: the network of a model/net preset at an image size, and a batch and models to compare.
SIZES = {
    "seed003": dict(preset="seed003", img_size=32, in_chans=3, batch=64, models=["softmax", "timm"]),
    "quickstart": dict(
        preset="digits", img_size=8, in_chans=1, batch=32, models=["softmax", "performer+exp"]
    ),
}


def net_of(size: dict) -> dict:
    """The backbone arguments of ``size``: its preset (conf/model/net/<preset>.yaml, or the network
    of conf/recipe/<preset>.yaml), the one its runs train."""
    from omegaconf import OmegaConf

    named = Path(CONF_DIR) / "model" / "net" / f"{size['preset']}.yaml"
    if named.is_file():
        preset = OmegaConf.to_container(OmegaConf.load(named))
    else:
        recipe = OmegaConf.load(Path(CONF_DIR) / "recipe" / f"{size['preset']}.yaml")
        preset = OmegaConf.to_container(recipe.model.net)
    return {"img_size": size["img_size"], "in_chans": size["in_chans"], **preset}


class FavorFloor(torch.autograd.Function):
    """What Performer attention under a mask cannot do without, at small grids: the projection of
    q and k to m features [B, H, L, d] -> [B, H, L, m], their exponential, the kernel matrix
    phi(q) phi(k)^T, its product with v, and in the backward the products that carry the gradient
    back through each (dS, dv, d phi(q), d phi(k), and the projection back to d); plus the copy of
    q, k, v out of the layer's qkv layout that batched products need. No stabilisers, eps, mask,
    normalisation or their gradients: the numbers are wrong, the time is a lower bound."""

    @staticmethod
    def forward(ctx, q, k, v, w):
        b, h, n, d = q.shape
        qkv = torch.stack([q, k, v])
        x, v = qkv[:2], qkv[2].view(b * h, n, d)
        phi = (x.reshape(-1, d) @ w.T).exp_().view(2, b * h, n, -1)
        kernel = torch.bmm(phi[0], phi[1].transpose(1, 2))
        ctx.save_for_backward(w, phi, v, kernel)
        return torch.bmm(kernel, v).view(b, h, n, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        w, phi, v, kernel = ctx.saved_tensors
        b, h, n, d = grad.shape
        grad = grad.reshape(b * h, n, d)
        d_kernel = torch.bmm(grad, v.transpose(1, 2))
        dv = torch.bmm(kernel.transpose(1, 2), grad)
        d_phi = torch.empty_like(phi)
        torch.bmm(d_kernel, phi[1], out=d_phi[0])
        torch.bmm(d_kernel.transpose(1, 2), phi[0], out=d_phi[1])
        dx = (d_phi.mul_(phi).view(-1, w.shape[0]) @ w).view(2, b, h, n, d)
        return dx[0], dx[1], dv.view(b, h, n, d), None


class FloorAttention(PerformerAttention):
    """A Performer kernel whose attention is ``FavorFloor`` (the RPE mask is not computed)."""

    def attend(self, q, k, v, rpe):
        return FavorFloor.apply(q, k, v, self.projection * self.head_dim**-0.25)


def with_floor_attention(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every Performer kernel swapped for a ``FloorAttention`` of the same size."""
    for module in model.modules():
        if isinstance(module, MultiHeadSelfAttention) and isinstance(module.kernel, PerformerAttention):
            kernel = module.kernel
            module.kernel = FloorAttention(kernel.head_dim, nb_features=kernel.nb_features)
    return model


def build(name: str, net: dict, impl: str) -> torch.nn.Module:
    if name == "timm":
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        if net.get("pool", "cls") != "cls":
            raise SystemExit("timm's model is only built with cls pooling (the seed003 size)")
        return TimmViT(**net, num_classes=10, qkv_bias=True)
    name, floor = name.removesuffix("/floor"), name.endswith("/floor")
    if floor and not name.startswith("performer"):
        raise SystemExit(f"{name}/floor: only Performer models have a floor (performer[+rpe]/floor)")
    attention, _, rpe = name.partition("+")
    model = VisionTransformer(
        **net, num_classes=10, attention=attention, rpe=rpe or "none", rpe_kwargs={"impl": impl}
    )
    return with_floor_attention(model) if floor else model


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


def json_name(args) -> str:
    """model.json for the seed-003 default (ours against timm), else the size and models in the name."""
    tag = "" if (args.size, args.models) == ("seed003", SIZES["seed003"]["models"]) else f"_{args.size}"
    if tag and args.models != SIZES[args.size]["models"]:
        tag += "_" + "_".join(name.replace("+", "-").replace("/", "-") for name in args.models)
    tag += f"_threads{args.threads}" if args.threads else ""  # --threads 1 and 2 keep their own files
    return f"model{tag}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.bench model", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="seed003")
    parser.add_argument(
        "--models", nargs="+", default=None, help="timm or attention[+rpe]; ratios are to the first"
    )
    parser.add_argument("--batch", type=int, default=None, help="default: the size's batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per model per round")
    parser.add_argument("--impl", default="auto", help="model.net.rpe_kwargs.impl of the models with an RPE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="folder for the JSON record")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 rounds of 1 step (a smoke test)")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    args.models = args.models or size["models"]
    args.batch = args.batch or size["batch"]
    if args.quick:
        args.batch, args.rounds, args.steps = 8, 2, 1
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = net_of(size)
    models = {name: build(name, net, args.impl).to(device).train() for name in args.models}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    img, chans = net["img_size"], net["in_chans"]
    images = torch.randn(args.batch, chans, img, img, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    for name in args.models:  # warm-up: allocator, kernels, optimizer state
        train_steps(models[name], opts[name], images, labels, 2, device)
    seconds: dict[str, list[float]] = {name: [] for name in args.models}
    for _ in range(args.rounds):
        for name in args.models:
            seconds[name].append(train_steps(models[name], opts[name], images, labels, args.steps, device))

    config = net | vars(args) | {"out": str(args.out)}
    result = {"environment": environment(device), "config": config, "models": {}}
    for name in args.models:
        best, median = min(seconds[name]), sorted(seconds[name])[len(seconds[name]) // 2]
        result["models"][name] = {
            "params": sum(p.numel() for p in models[name].parameters()),
            "images_per_s": args.batch * args.steps / best,
            "images_per_s_median": args.batch * args.steps / median,
            "step_ms": 1e3 * best / args.steps,
            "step_ms_median": 1e3 * median / args.steps,
        }
        record = result["models"][name]
        print(
            f"{name:16s} {record['params']:>9,d} params  {record['images_per_s']:8.1f} images/s "
            f"(median {record['images_per_s_median']:.1f})  {record['step_ms']:.1f} ms/step"
        )
    first = result["models"][args.models[0]]
    result["step_time_ratios"] = {}
    for name in args.models[1:]:
        record = result["models"][name]
        ratio = record["step_ms"] / first["step_ms"]
        ratio_median = record["step_ms_median"] / first["step_ms_median"]
        result["step_time_ratios"][name] = {"best": ratio, "median": ratio_median}
        print(f"{name} / {args.models[0]} step time: {ratio:.2f}x (median rounds {ratio_median:.2f}x)")
    path = args.out / json_name(args)
    write_json(path, result)
    print(f"wrote {path}")
    return 0

"""Param groups (which parameters decay, the lr of each layer) and the lr the task logs."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import TINY_TIMM, quiet_trainer, save_tiny_hf_vit
from vit_rpe.models import VisionTransformer
from vit_rpe.models.pretrained import HFViT, TimmBackbone
from vit_rpe.models.rpe import RPES
from vit_rpe.tasks import ImageClassifier
from vit_rpe.tasks.optim import build_optimizer, param_groups

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.1, "weight_decay": 0.05}


def scratch_vit(depth: int = 2, **kwargs) -> VisionTransformer:
    return VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=depth, num_heads=2, **kwargs
    )


def group_by_name(optimizer: torch.optim.Optimizer, net: torch.nn.Module) -> dict[str, dict]:
    """Parameter name -> the optimizer's param group holding it."""
    names = {id(p): n for n, p in net.named_parameters()}
    return {names[id(p)]: group for group in optimizer.param_groups for p in group["params"]}


def optimizer_of(net: torch.nn.Module, optimizer=ADAMW, layer_decay: float | None = None):
    task = ImageClassifier(net, num_classes=3, optimizer=optimizer, finetune={"layer_decay": layer_decay})
    return task.configure_optimizers()["optimizer"]


def names_by_decay(groups: list[dict], net: torch.nn.Module) -> dict[bool, set[str]]:
    """Decayed (True: the optimizer's own weight decay) or not (False) -> parameter names."""
    names = {id(p): n for n, p in net.named_parameters()}
    split: dict[bool, set[str]] = {True: set(), False: set()}
    for group in groups:
        split["weight_decay" not in group].update(names[id(p)] for p in group["params"])
    return split


# --- weight decay ------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_decay", [None, 0.5])
@pytest.mark.parametrize("family", sorted(RPES))
def test_no_rpe_parameter_is_decayed(family, layer_decay):
    """Every registered family: decaying one family's table but not another's scalars (1-D) would
    skew their comparison; like position embeddings, RPE parameters get no decay (rope: the learned
    frequencies of its mixed variant; the axial one has none)."""
    net = scratch_vit(rpe=family, rpe_kwargs={"variant": "mixed"} if family == "rope" else None)
    groups = group_by_name(optimizer_of(net, layer_decay=layer_decay), net)
    rpe = [name for name in groups if ".attn.rpe." in name]
    assert rpe
    assert {name: groups[name]["weight_decay"] for name in rpe} == {name: 0.0 for name in rpe}
    assert groups["blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05  # weight matrices still decay


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_a_compiled_backbone_gets_the_groups_of_the_plain_one(layer_decay):
    """model.compile=true: torch.compile prefixes every name with ``_orig_mod.``."""
    net = scratch_vit(depth=3, rpe="general")

    def settings(module):
        groups = group_by_name(optimizer_of(module, layer_decay=layer_decay), net)
        return {name: (group["weight_decay"], group["lr"]) for name, group in groups.items()}

    assert settings(torch.compile(net)) == settings(net)


def test_a_plain_optimizer_factory_keeps_its_weight_decay_and_the_layer_lrs():
    """Not a functools.partial: nothing to read the decay or the lr from, yet both must hold."""

    def make_optimizer(params):
        return torch.optim.AdamW(params, lr=0.1, weight_decay=0.3)

    net = scratch_vit(depth=3)
    groups = group_by_name(optimizer_of(net, make_optimizer, layer_decay=0.5), net)
    assert groups["blocks.0.attn.qkv.weight"]["weight_decay"] == 0.3
    assert groups["blocks.0.attn.qkv.bias"]["weight_decay"] == 0.0
    assert groups["head.weight"]["lr"] == pytest.approx(0.1)
    assert groups["blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_the_logged_lr_is_the_heads_under_layer_decay(tmp_path):
    torch.manual_seed(0)
    task = ImageClassifier(scratch_vit(), num_classes=3, optimizer=ADAMW, finetune={"layer_decay": 0.5})
    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(task, DataLoader(data, batch_size=4))
    assert trainer.callback_metrics["train/lr"].item() == pytest.approx(0.1)  # not the embeddings' 0.0125


def test_single_lr_groups_are_layer_decay_with_one_layer():
    net = scratch_vit(rpe="general")
    single = param_groups(net)
    assert [g.get("weight_decay") for g in single] == [0.0, None] and {g["lr_scale"] for g in single} == {1.0}
    one_per_layer = param_groups(net, layer_decay=1.0)
    assert len(one_per_layer) > 2 and {g["lr_scale"] for g in one_per_layer} == {1.0}
    assert names_by_decay(one_per_layer, net) == names_by_decay(single, net)
    not_decayed = {n for n, p in net.named_parameters() if p.ndim == 1 or ".rpe." in n}
    assert names_by_decay(single, net)[False] == not_decayed | {"pos_embed", "cls_token"}


# --- layer-wise lr decay: lr x layer_decay ** (distance from the head) ---------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_tiny_hf_vit(tmp_path_factory.mktemp("hf_tiny"))


def lr_by_name(optimizer: torch.optim.Optimizer, net: torch.nn.Module) -> dict[str, float]:
    return {name: group["lr"] for name, group in group_by_name(optimizer, net).items()}


def test_layer_decay_gives_each_layer_its_learning_rate(hf_folder):
    net = HFViT(str(hf_folder), num_classes=3)
    optimizer = optimizer_of(
        net, {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1.0}, layer_decay=0.5
    )
    lrs = lr_by_name(optimizer, net)
    assert lrs["model.classifier.weight"] == 1.0  # head: x1
    assert lrs["model.vit.layernorm.weight"] == 0.5  # final norm: with the last block
    block = {i: {v for k, v in lrs.items() if f"layers.{i}." in k or f"layer.{i}." in k} for i in (0, 1)}
    assert block == {1: {0.5}, 0: {0.25}}  # last block x0.5, first x0.25
    assert lrs["model.vit.embeddings.patch_embeddings.projection.weight"] == 0.125  # embeddings lowest
    groups = group_by_name(optimizer, net)
    assert {groups[n]["weight_decay"] for n, p in net.named_parameters() if p.ndim == 1} == {0.0}
    assert len(groups) == len(list(net.parameters()))


def test_layer_decay_for_timm_and_the_scratch_vit():
    timm_net = TimmBackbone("vit_tiny_patch16_224", num_classes=3, pretrained=False, model_kwargs=TINY_TIMM)
    lrs = lr_by_name(optimizer_of(timm_net, layer_decay=0.5), timm_net)
    assert lrs["model.head.weight"] == pytest.approx(0.1)
    assert lrs["model.blocks.1.mlp.fc1.weight"] == pytest.approx(0.05)
    assert lrs["model.blocks.0.mlp.fc1.weight"] == pytest.approx(0.025)
    assert lrs["model.pos_embed"] == pytest.approx(0.0125)

    scratch = scratch_vit(depth=3, rpe="exp")
    lrs = lr_by_name(
        optimizer_of(scratch, {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1.0}, 0.5), scratch
    )
    assert lrs["head.weight"] == 1.0 and lrs["norm.weight"] == 0.5
    assert lrs["blocks.2.norm1.weight"] == 0.5 and lrs["blocks.0.norm1.weight"] == 0.125
    assert lrs["blocks.2.attn.rpe.raw_rate"] == 0.5 and lrs["blocks.0.attn.rpe.raw_rate"] == 0.125
    assert lrs["pos_embed"] == 0.0625


# --- layer-wise decay of the shipped model configs: the lrs of the numbering each backbone had -----

TINY_SCRATCH = ("model.net.embed_dim=16", "model.net.depth=3", "model.net.num_heads=2")
TINY_TIMM_CFG = (
    "model.net.name=vit_tiny_patch16_224",
    "model.net.pretrained=false",
    "model.net.img_size=8",
    "model.net.patch_size=2",
    "model.net.embed_dim=16",
    "model.net.depth=3",
    "model.net.num_heads=2",
)
SHIPPED = {
    "vit": ("model=vit", *TINY_SCRATCH),
    "vit_general_cls": ("model=vit", "rpe=general", "model.net.pool=cls", *TINY_SCRATCH),
    "vit_conv_stem_sincos": (
        "model=vit",
        "model.net.patch_embed=conv_stem",
        "model.net.pos_embed=sincos2d",
        *TINY_SCRATCH,
    ),
    "performer_exp": ("model=performer", "rpe=exp", *TINY_SCRATCH),
    "linear_poly": ("model=linear", "rpe=poly", *TINY_SCRATCH),
    "timm_vit": ("model=timm_vit", *TINY_TIMM_CFG),
    "hf_vit": ("model=hf_vit",),
}


def reference_layer(name: str, depth: int) -> int:
    """The numbering before the backbone interface, written out: timm's ViT layout (embeddings 0,
    block i at i + 1, the final norm with the last block, the head on top), HF's names included."""
    name = name.removeprefix("model.").removeprefix("vit.")
    if match := re.match(r"(?:blocks|(?:encoder\.)?layers?)\.(\d+)\.", name):
        return int(match.group(1)) + 1
    if name.startswith(("head.", "classifier.", "fc_norm.")):
        return depth + 1
    return depth if name.startswith(("norm.", "layernorm.")) else 0


@pytest.mark.parametrize("config", sorted(SHIPPED))
def test_layer_decay_of_the_shipped_models_keeps_each_layers_lr(config, train_config, tmp_path):
    overrides = SHIPPED[config]
    if config == "hf_vit":
        folder = save_tiny_hf_vit(tmp_path / "hf", num_labels=10, image_size=8)
        overrides = (*overrides, f"model.net.name_or_path={folder}")
    cfg = train_config("data=digits", *overrides, "model.finetune.layer_decay=0.75", fast=False)
    task = instantiate(cfg.model)
    optimizer = build_optimizer(task.make_optimizer, task.net, task.finetune.layer_decay)
    base = cfg.model.optimizer.lr
    names = {id(p): n for n, p in task.net.named_parameters()}
    lrs = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    depth = 2 if config == "hf_vit" else 3
    expected = {name: base * 0.75 ** (depth + 1 - reference_layer(name, depth)) for name in names.values()}
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert len(set(lrs.values())) == depth + 2  # every layer has its own lr

"""A run's data and model from its config: the one path ``train.py`` and ``eval.py`` share.

``build_run`` instantiates the datamodule, fills in what the model config takes from the data
(its shape and class names), checks the backbone config at the boundary, builds the model (or
the one a checkpoint saved, with its weights) and hands the backbone's input size and
normalisation to the datamodule. An entry point that built any of this on its own could drift
from the other: eval once tested pretrained checkpoints without their preprocessing.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_rpe.data import ImageDataModule, fill_data_metadata
from vit_rpe.models.backbone import PretrainedBackbone
from vit_rpe.tasks import ImageClassifier
from vit_rpe.utils.checkpoint import load_weights, read_task_checkpoint
from vit_rpe.utils.errors import CheckpointError, ConfigError

log = logging.getLogger("vit_rpe.build")


def build_run(
    cfg: DictConfig, ckpt_path: str | None = None, resuming: Mapping[str, Any] | None = None
) -> tuple[ImageDataModule, ImageClassifier]:
    """The datamodule of ``cfg.data`` and the model of ``cfg.model``, or, with ``ckpt_path``, the
    model that checkpoint saved (its config and weights; a pretrained backbone is rebuilt without
    its source). Seeds before the model is built, so its initial weights follow ``cfg.seed``.

    ``resuming``: the checkpoint a training run continues from. Its weights replace the built
    ones, so a pretrained backbone is rebuilt from the checkpoint's record of its source, not
    from the hub or the source file (they may be gone, and their weights would be thrown away).
    """
    ckpt = read_task_checkpoint(ckpt_path) if ckpt_path else None
    datamodule: ImageDataModule = instantiate(cfg.data)
    fill_data_metadata(cfg, datamodule)
    if ckpt is None:
        model_cfg = cfg.model
        rpe = cfg.get("rpe") or {}
        check_backbone_config(model_cfg.net, rpe.get("family"))
    else:
        model_cfg = saved_model_config(ckpt, ckpt_path)
    fill_class_names(model_cfg.net, datamodule)
    OmegaConf.resolve(cfg)
    L.seed_everything(cfg.seed, workers=True)
    log.info("data: %s", cfg.data._target_)
    log.info("model: %s", model_cfg.net._target_)
    if resuming is not None:
        model_cfg = with_recorded_source(model_cfg, resuming["hyper_parameters"]["net"])
    model: ImageClassifier = instantiate(model_cfg)
    if isinstance(model.net, PretrainedBackbone):  # built for its weights' input, not for the data's
        datamodule.apply_data_config(model.net.data_config())
    if ckpt is not None:
        check_matches_data(ckpt["hyper_parameters"], datamodule, ckpt_path)
        load_weights(model, ckpt["state_dict"], source=ckpt_path)
    return datamodule, model


def saved_model_config(ckpt: Mapping[str, Any], path: str | Path) -> DictConfig:
    """The task config a checkpoint of ``ImageClassifier`` saved, checked at the boundary."""
    saved = {"_target_": target_of(ImageClassifier), "_recursive_": False, **ckpt["hyper_parameters"]}
    model_cfg = OmegaConf.create(saved)
    check_backbone_config(model_cfg.net, None, source=f"the config saved in {path}")
    return model_cfg


def with_recorded_source(model_cfg: DictConfig, saved_net: Mapping[str, Any]) -> DictConfig:
    """``model_cfg`` with the ``resolved_source`` a checkpoint recorded for its pretrained backbone
    (see models/pretrained/); unchanged for a backbone without one."""
    source = saved_net.get("resolved_source")
    if source is None or saved_net.get("_target_") != model_cfg.net.get("_target_"):
        return model_cfg  # check_fits names a checkpoint of another model
    model_cfg = copy.deepcopy(model_cfg)  # the run's config.yaml keeps what the user wrote
    with open_dict(model_cfg):
        model_cfg.net.resolved_source = source
    return model_cfg


def target_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def fill_class_names(net_cfg: DictConfig, datamodule: ImageDataModule) -> None:
    """``model.net.class_names: null`` -> the datamodule's class names (label maps of an export)."""
    if "class_names" not in net_cfg or net_cfg.class_names is not None:
        return
    names = getattr(datamodule, "class_names", None)
    if names:
        with open_dict(net_cfg):
            net_cfg.class_names = [str(name) for name in names]


def check_matches_data(hparams: Mapping[str, Any], datamodule: ImageDataModule, path: str) -> None:
    """The checkpoint's model was trained on data of this shape: classes, channels, image size
    (after the datamodule took on the backbone's input size, for a pretrained one)."""
    net = hparams["net"]
    expected = {
        "num_classes": hparams.get("num_classes", net.get("num_classes")),
        "in_chans": net.get("in_chans"),
        "image_size": net.get("img_size"),
    }
    for key, trained in expected.items():
        given = getattr(datamodule, key, None)
        if trained is None or given is None:
            continue
        trained_size = trained[0] if isinstance(trained, (list, tuple)) else trained
        given_size = given[0] if isinstance(given, (list, tuple)) else given
        if int(trained_size) != int(given_size):
            raise CheckpointError(
                f"checkpoint {path} was trained with {key}={trained} but the data has {key}={given}: "
                f"evaluate on the data it was trained on (data=...), or set data.{key}={trained} if the data "
                "allows it"
            )


# --- the config boundary ----------------------------------------------------------------------


def check_backbone_config(
    net_cfg: Mapping[str, Any], rpe_family: str | None, source: str | None = None
) -> None:
    """``model.net`` holds only arguments of its backbone, and ``rpe=`` only goes to a backbone
    that takes relative position encodings.

    An experiment made for one backbone composed with another model (``experiment=quickstart
    model=timm_vit``) leaves keys the other cannot take: they are named here, with who set them
    (``source``, else the command line or the config group option), before anything is built.
    """
    backbone = get_class(net_cfg["_target_"])
    params = inspect.signature(backbone).parameters
    model = model_choice(net_cfg["_target_"])
    if rpe_family == "rope" and "rpe" not in params:
        raise ConfigError(
            f"rpe=rope works with the from-scratch ViT only: {model} keeps the position embedding it was "
            "pretrained with, and rotating its queries and keys would change what its weights compute. For "
            "a pretrained RoPE ViT take timm's (Heo et al.'s weights): model=timm_vit "
            "model.net.name=vit_small_patch16_rope_mixed_224.naver_in1k rpe=none; or use model=vit"
        )
    if rpe_family not in (None, "none") and "rpe" not in params:
        raise ConfigError(
            f"rpe={rpe_family} works with the from-scratch ViT only: {model} takes no relative position "
            "encoding (a pretrained network's attention cannot take the mask). Drop the rpe override "
            "(rpe=none) or use model=vit"
        )
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    refused = [key for key in net_cfg if not key.startswith("_") and key not in params]
    if not refused:
        return
    by_origin: dict[str, list[str]] = {}
    for key in refused:
        origin = source or " and ".join(origins(f"model.net.{key}")) or "the composed config"
        by_origin.setdefault(origin, []).append(f"model.net.{key}")
    named = "; ".join(f"{', '.join(keys)} (set by {origin})" for origin, keys in by_origin.items())
    removals = " ".join(f"~model.net.{key}" for key in refused)
    taken = ", ".join(name for name in params if name != "resolved_source")
    raise ConfigError(
        f"{model} does not take {named}: options of another backbone. Remove them ({removals} on the "
        f"command line), or use a model that takes them. {backbone.__name__} takes: {taken}"
    )


def model_choice(target: str) -> str:
    """``model=timm_vit (vit_rpe.models.pretrained.TimmBackbone)``: how the user named the model."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return f"model={choices['model']} ({target})" if choices.get("model") else target


def origins(key: str) -> list[str]:
    """Who set a key of the composed config: command-line overrides of it, and the config group
    options chosen (experiment=..., model/net=...) whose file sets it."""
    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    found = [
        f"the command line: {override}"
        for override in hydra_cfg.overrides.task
        if override.lstrip("+~").split("=", 1)[0] == key
    ]
    folders = [Path(source.path) for source in hydra_cfg.runtime.config_sources if source.schema == "file"]
    for group, option in hydra_cfg.runtime.choices.items():
        if option and not group.startswith("hydra") and any(sets(f, group, option, key) for f in folders):
            found.append(f"{group}={option}")
    return found


def sets(folder: Path, group: str, option: str, key: str) -> bool:
    """Does the file of ``group=option`` under ``folder`` set ``key`` (a dotted path of the
    composed config)? Its keys sit under its package: ``# @package`` or the group's path."""
    path = folder / group / f"{option}.yaml"
    if not path.is_file():
        return False
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#") and "@package" in line]
    package = header[0].split("@package", 1)[1].strip() if header else group.replace("/", ".")
    parts, prefix = key.split("."), [] if package == "_global_" else package.split(".")
    if parts[: len(prefix)] != prefix:
        return False
    node = yaml.safe_load(text) or {}
    for part in parts[len(prefix) :]:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True

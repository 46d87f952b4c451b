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
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_rpe.data import ImageDataModule, fill_data_metadata
from vit_rpe.models.backbone import PretrainedBackbone
from vit_rpe.models.embed import GridSized
from vit_rpe.origins import who_set
from vit_rpe.tasks import ImageClassifier
from vit_rpe.utils.checkpoint import load_weights, read_task_checkpoint
from vit_rpe.utils.errors import CheckpointError, ConfigError
from vit_rpe.utils.threads import set_threads

log = logging.getLogger("vit_rpe.build")

# where Lightning stores a datamodule's save_hyperparameters() in a checkpoint
DATAMODULE_HPARAMS = L.LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY


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
    set_threads(cfg.get("threads"))
    ckpt = read_task_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None and "_target_" not in cfg.data:
        data_from_checkpoint(cfg, ckpt, ckpt_path)
    datamodule: ImageDataModule = instantiate(cfg.data)
    fill_data_metadata(cfg, datamodule)
    if ckpt is None:
        model_cfg = cfg.model
        check_backbone_config(model_cfg.net)
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
        resizable = isinstance(model.net, GridSized)
        check_matches_data(ckpt["hyper_parameters"], datamodule, ckpt_path, check_size=not resizable)
        load_weights(model, ckpt["state_dict"], source=ckpt_path)
        if resizable:
            grid = model.net.grid_size_for(datamodule.image_size)
            if grid != model.net.grid_size:
                log.info(
                    "evaluating at %s px: patch grid %s -> %s",
                    datamodule.image_size,
                    model.net.grid_size,
                    grid,
                )
                model.net.set_grid_size(grid)
    return datamodule, model


def saved_model_config(ckpt: Mapping[str, Any], path: str | Path) -> DictConfig:
    """The task config a checkpoint of ``ImageClassifier`` saved, checked at the boundary."""
    saved = {"_target_": target_of(ImageClassifier), "_recursive_": False, **ckpt["hyper_parameters"]}
    model_cfg = OmegaConf.create(with_partial_factories(saved))
    check_backbone_config(model_cfg.net, source=f"the config saved in {path}")
    return model_cfg


def data_from_checkpoint(cfg: DictConfig, ckpt: Mapping[str, Any], path: str) -> None:
    """``cfg.data`` names no datamodule (eval without ``data=``): the one the checkpoint's run
    trained on (its recorded arguments), with the keys the command line set (``data.image_size``)."""
    saved = ckpt.get(DATAMODULE_HPARAMS)
    if not saved or "_target_" not in saved:
        raise CheckpointError(
            f"checkpoint {path} does not record its data (it was saved before checkpoints did): name it, "
            "e.g. data=mnist, as in the config.yaml of its run directory"
        )
    given = {key: value for key, value in cfg.data.items() if value is not None}
    with open_dict(cfg):
        cfg.data = OmegaConf.create({**saved, **given})


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


def with_partial_factories(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before the optimizer and scheduler configs said ``_partial_: true``
    (docs/configs.md, Key moves) builds as one written after."""
    for key in ("optimizer", "scheduler"):
        if isinstance(saved.get(key), Mapping) and "_target_" in saved[key]:
            saved[key] = {**saved[key], "_partial_": True}
    return saved


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


def check_matches_data(
    hparams: Mapping[str, Any], datamodule: ImageDataModule, path: str, check_size: bool = True
) -> None:
    """The checkpoint's model was trained on data of this shape: classes, channels, and image size
    (after the datamodule took on the backbone's input size, for a pretrained one) unless the
    backbone moves to another patch grid (``check_size=False``: set_grid_size)."""
    net = hparams["net"]
    expected = {
        "num_classes": hparams.get("num_classes", net.get("num_classes")),
        "in_chans": net.get("in_chans"),
        "image_size": net.get("img_size") if check_size else None,
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


def check_backbone_config(net_cfg: Mapping[str, Any], source: str | None = None) -> None:
    """``model.net`` holds only arguments of its backbone; a relative position encoding
    (``rpe=exp`` writes ``model.net.rpe``) only goes to a backbone that takes one.

    An experiment made for one backbone composed with another model (``experiment=quickstart
    model=timm_vit``) leaves keys the other cannot take: they are named here, with who set them
    (``source``, else the file or override that Hydra merged last: vit_rpe/origins.py), before
    anything is built.
    """
    backbone = get_class(net_cfg["_target_"])
    params = inspect.signature(backbone).parameters
    model = model_choice(net_cfg["_target_"])
    rpe = net_cfg.get("rpe")
    if rpe == "rope" and "rpe" not in params:
        raise ConfigError(
            f"rpe=rope works with the from-scratch ViT only: {model} keeps the position embedding it was "
            "pretrained with, and rotating its queries and keys would change what its weights compute. For "
            "a pretrained RoPE ViT take timm's (Heo et al.'s weights): model=timm_vit "
            "model.net.name=vit_small_patch16_rope_mixed_224.naver_in1k rpe=none; or use model=vit"
        )
    if "rpe" in net_cfg and "rpe" not in params:
        raise ConfigError(
            f"rpe={rpe} works with the from-scratch ViT only: {model} takes no relative position "
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
        origin = source or who_set(f"model.net.{key}") or "the composed config"
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

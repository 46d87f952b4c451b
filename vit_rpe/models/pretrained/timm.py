"""Any timm model as a backbone: timm's weights adapted to the dataset, timm's own interface.

timm models already speak the backbone interface (models/backbone.py); the adapter adds the
``model.`` prefix of its parameter names, the data config of the checkpoint, and what a run
needs around the weights: building them offline from a checkpoint (``resolved_source``) and
exporting them as a folder timm loads back (``save_pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit_rpe.models.backbone import channel_stats
from vit_rpe.models.pretrained.hub import DOWNLOAD_HINT, check_hub_reachable, hub_errors
from vit_rpe.utils.checkpoint import state_dict_mismatch
from vit_rpe.utils.errors import CheckpointError, ConfigError, UserError


class TimmBackbone(nn.Module):
    """Any timm model, adapted to the dataset's image size, channel count and classes.

    ``name`` is a timm model name (``vit_small_patch16_224``, with an optional pretrained tag),
    ``hf-hub:<repo>`` or ``local-dir:<folder>`` (a folder written by ``save_pretrained``).
    ``pretrained`` loads timm's weights (from the hub) or ``checkpoint_path``, a local state
    dict (.safetensors/.pth/.bin) of the same architecture. timm adapts the weights to the model
    asked for: position embeddings are interpolated to ``img_size``, patch-embedding kernels are
    resampled to ``patch_size`` and summed/repeated to ``in_chans``, and a new head is made when
    ``num_classes`` differs. None keeps the model's default.

    ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio`` and ``qkv_bias`` (timm's names, which
    the from-scratch ViT shares) build another size of the architecture: from scratch, since
    pretrained weights fit their own size only (refused before any download). ``model_kwargs``
    passes any other ``timm.create_model`` argument. ``resolved_source`` rebuilds a fine-tuned
    model from its checkpoint alone (see ``resolved_source()``).
    """

    def __init__(
        self,
        name: str = "vit_small_patch16_224",
        num_classes: int = 1000,
        pretrained: bool = True,
        checkpoint_path: str | None = None,
        img_size: int | None = None,
        in_chans: int = 3,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        qkv_bias: bool | None = None,
        drop_rate: float | None = None,
        attn_drop_rate: float | None = None,
        drop_path_rate: float | None = None,
        class_names: Sequence[str] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        resolved_source: dict[str, Any] | None = None,
    ):
        super().__init__()
        import timm

        # What timm adapts pretrained weights to, and the architecture the weights must have.
        adapted = dict(
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            patch_size=patch_size,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            **(model_kwargs or {}),
        )
        size = dict(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias
        )
        size = {key: value for key, value in size.items() if value is not None}
        if resolved_source:  # a fine-tuned checkpoint's: the same model, its weights loaded next
            given = {k: v for k, v in {**adapted, **size}.items() if v is not None}
            self.model = timm.create_model(
                resolved_source["name"],
                pretrained=False,
                pretrained_cfg=resolved_source["pretrained_cfg"],
                **{**resolved_source["model_args"], **given},
            )
        else:
            self.model = create_timm_model(name, pretrained, checkpoint_path, adapted, size)
        self.name = name
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.pretrained = bool(pretrained or checkpoint_path)  # then the checkpoint's preprocessing applies
        self.class_names = list(class_names) if class_names else None

    # --- the backbone interface: timm's own, under the ``model.`` prefix --------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        self.model.reset_classifier(num_classes)
        self.num_classes = num_classes
        self.class_names = None

    def no_weight_decay(self) -> set[str]:
        return {f"model.{name}" for name in self.model.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's grouping of the model (stem, blocks, head), as a matcher of the prefixed names."""
        from timm.models import group_parameters

        if not callable(getattr(self.model, "group_matcher", None)):
            raise ConfigError(
                f"timm model {self.name} has no layer groups: set model.finetune.layer_decay=null"
            )
        groups = group_parameters(self.model, self.model.group_matcher(coarse=coarse), reverse=True)
        return lambda name: groups[name.removeprefix("model.")]

    def data_config(self) -> dict[str, Any]:
        """The input size the model is built for; the checkpoint's normalisation when pretrained."""
        config: dict[str, Any] = {"input_size": (self.in_chans, *self.image_size)}
        if self.pretrained:
            cfg = self.model.pretrained_cfg
            config["mean"] = channel_stats(cfg.get("mean", (0.485, 0.456, 0.406)), self.in_chans)
            config["std"] = channel_stats(cfg.get("std", (0.229, 0.224, 0.225)), self.in_chans)
        return config

    @property
    def image_size(self) -> tuple[int, int]:
        patch_embed = getattr(self.model, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None)  # what a ViT is built for; else the checkpoint's
        return tuple(int(s) for s in size or self.model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])

    # --- a pretrained backbone: rebuilt from a checkpoint, exported as a folder --------------------

    def resolved_source(self) -> dict[str, Any]:
        """What rebuilds this model with no download and no file: the timm architecture, the
        arguments it was built with (timm records them, those of a folder's config.json too) and
        its pretrained config (input size, mean and std)."""
        return {
            "name": self.model.pretrained_cfg.get("architecture") or self.name.split(".")[0],
            "pretrained_cfg": dict(self.model.pretrained_cfg),
            "model_args": dict(getattr(self.model, "_model_args", {})),
        }

    def save_pretrained(self, folder: str | Path, data_config: dict[str, Any] | None = None) -> None:
        """timm's hub format (config.json + model.safetensors): ``local-dir:<folder>`` loads it back.

        ``data_config`` is the preprocessing training used (the datamodule's), which may differ
        from the source checkpoint's when training started from scratch.
        """
        from timm.models import save_for_hf

        data_config = dict(data_config or {})
        exported = {"input_size": tuple(data_config.get("input_size") or (self.in_chans, *self.image_size))}
        if data_config.get("mean") is not None:
            exported.update(mean=tuple(data_config["mean"]), std=tuple(data_config["std"]))
        model_config = {"label_names": self.class_names} if self.class_names else None
        save_for_hf(
            self.model, str(folder), model_config=model_config, safe_serialization=True, data_config=exported
        )


def create_timm_model(
    name: str, pretrained: bool, checkpoint_path: str | None, adapted: dict[str, Any], size: dict[str, Any]
) -> nn.Module:
    """``timm.create_model``, its failures turned into errors that say what to change.

    ``adapted`` are the arguments timm adapts pretrained weights to, ``size`` those that change
    the architecture itself (embed_dim, depth, ...).
    """
    import timm

    if not name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(name.split(".")[0]):
        similar = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(
            f"model.net.name={name!r} is not a timm model; similar names: {', '.join(similar) or 'none'} "
            "(timm.list_models() lists them all; local-dir:<folder> loads an exported folder)"
        )
    overlay = None
    if checkpoint_path:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"model.net.checkpoint_path={checkpoint_path} does not exist: give a .safetensors, "
                ".pth or .bin state dict of the timm model, or null to download timm's weights"
            )
        overlay, pretrained = {"file": str(path)}, True
    fix = (
        f"{DOWNLOAD_HINT.format(repo=hub_repo(name) or '<repo>')}, put the weights in a local file and "
        "set model.net.checkpoint_path, load a folder exported by a run "
        "(model.net.name=local-dir:<run>/hf_model), or train from scratch with model.net.pretrained=false"
    )
    try:
        if pretrained and size and not checkpoint_path:  # a local file may hold any size
            check_pretrained_size(name, adapted, size)
        if pretrained and not checkpoint_path and not in_hub_cache(name):
            check_hub_reachable("the timm weights of", name, fix)
        with hub_errors("the timm weights of", name, fix):
            return timm.create_model(
                name, pretrained=pretrained, pretrained_cfg_overlay=overlay, **adapted, **size
            )
    except TypeError as err:
        raise ConfigError(f"timm model {name} does not take these arguments: {err}") from err
    except AssertionError as err:  # timm checks its arguments with asserts
        given = ", ".join(f"model.net.{k}={v}" for k, v in {**adapted, **size}.items() if v is not None)
        raise ConfigError(f"timm model {name} cannot be built with {given}: {err}") from err
    except UserError:
        raise
    except Exception as err:
        if not checkpoint_path:
            raise
        raise CheckpointError(
            f"model.net.checkpoint_path={checkpoint_path} is not a state dict of timm model {name}: {err}"
        ) from err


def check_pretrained_size(name: str, adapted: dict[str, Any], size: dict[str, Any]) -> None:
    """Pretrained weights load into their own architecture only: another size is refused before
    anything is downloaded (both models are built on the meta device: shapes, no memory)."""
    import timm

    with torch.device("meta"):
        pretrained_size = timm.create_model(name, pretrained=False, **adapted)
        asked = timm.create_model(name, pretrained=False, **adapted, **size)
    mismatch = state_dict_mismatch(pretrained_size.state_dict(), asked.state_dict())
    if mismatch:
        keys = ", ".join(f"model.net.{key}={value}" for key, value in size.items())
        raise ConfigError(
            f"{keys} make timm model {name} another size than its pretrained weights ({mismatch}), so "
            "they cannot load: train this size from scratch with model.net.pretrained=false (and "
            f"model.net.img_size for the input size), or remove these keys to fine-tune the pretrained {name}"
        )


def hub_repo(name: str) -> str | None:
    """The hub repository timm downloads ``name``'s weights from (None: a folder, or not the hub)."""
    from timm.models import get_pretrained_cfg

    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:").split("@")[0]
    if name.startswith("local-dir:"):
        return None
    cfg = get_pretrained_cfg(name)
    return cfg.hf_hub_id if cfg is not None else None


def in_hub_cache(name: str) -> bool:
    """Are ``name``'s weights in the local HuggingFace cache (then no download is needed)?

    True as well where timm does not download from the hub (a folder, a URL): no probe for those.
    """
    from huggingface_hub import try_to_load_from_cache

    repo = hub_repo(name)
    if repo is None:
        return True
    files = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo, file), str) for file in files)

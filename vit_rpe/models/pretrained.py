"""Pretrained backbones from timm and HuggingFace transformers, with the face of any other backbone.

An adapter maps normalised images [B, C, H, W] to logits [B, num_classes], like VisionTransformer,
and adds what fine-tuning needs, all plain attributes and methods:

- ``data_config``: the input size and normalisation the checkpoint expects. A run hands it to the
  datamodule's device transform (vit_rpe/build.py), so the datamodule never needs to know the model.
- ``layer_id(name)`` / ``num_layers``: the depth of each parameter (0 = embeddings, the last
  = head), for layer-wise learning-rate decay.
- ``get_classifier()``: the head, which stays trainable while the backbone is frozen.
- ``no_weight_decay()`` and ``save_pretrained(folder, ...)``, which writes the library's own
  format, so a plain ``from_pretrained`` (or ``timm.create_model("local-dir:...")``) loads it back.
- ``resolved_source()``: the architecture and preprocessing as the hub or folder gave them. The
  task stores it with the backbone's config in every checkpoint; given back as the
  ``resolved_source`` argument, it rebuilds the model with no download and no file, and the
  checkpoint's weights are loaded into it (eval, ``ImageClassifier.load_from_checkpoint``).

Relative position encodings and the other attention options belong to the from-scratch
backbone: the adapters take no such arguments (the run's config check names them).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit_rpe.utils.checkpoint import state_dict_mismatch
from vit_rpe.utils.errors import CheckpointError, ConfigError, UserError

log = logging.getLogger(__name__)

HF_DEFAULT = "google/vit-base-patch16-224-in21k"


def channel_stats(values: Sequence[float], in_chans: int) -> list[float]:
    """Per-channel mean/std for ``in_chans`` channels: averaged when the checkpoint had others."""
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    return [sum(values) / len(values)] * in_chans


def looks_like_path(name: str) -> bool:
    """A hub id is ``owner/name``; anything rooted like a file path is meant as a local folder."""
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


@contextmanager
def hub_errors(what: str, name: str, fix: str) -> Iterator[None]:
    """Turn a failed hub download into one UserError that says how to work offline."""
    try:
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import HFValidationError
    try:
        yield
    except (OSError, HFValidationError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        raise UserError(
            f"could not load {what} {name!r}: {reason}. "
            + (
                "HF_HUB_OFFLINE=1 is set, so only the local HuggingFace cache is searched. "
                if offline
                else "The HuggingFace hub may be unreachable (or the name is wrong); set HF_HUB_OFFLINE=1 to "
                "use only the local cache. "
            )
            + f"Fix: {fix}"
        ) from err


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
        "put the weights in a local file and set model.net.checkpoint_path, load a folder exported "
        "by a run (model.net.name=local-dir:<run>/hf_model), download once where the hub is "
        "reachable, or train from scratch with model.net.pretrained=false"
    )
    try:
        with hub_errors("the timm weights of", name, fix):
            if pretrained and size and not checkpoint_path:  # a local file may hold any size
                check_pretrained_size(name, adapted, size)
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
        self._layer_ids: dict[str, int] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @property
    def image_size(self) -> int | tuple[int, int]:
        patch_embed = getattr(self.model, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None)  # what a ViT is built for; else the checkpoint's
        size = tuple(int(s) for s in size or self.model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        return size[0] if size[0] == size[1] else size

    @property
    def data_config(self) -> dict[str, Any]:
        """The input size the model is built for; the checkpoint's normalisation when pretrained."""
        config: dict[str, Any] = {"image_size": self.image_size}
        if self.pretrained:
            cfg = self.model.pretrained_cfg
            config["mean"] = channel_stats(cfg.get("mean", (0.485, 0.456, 0.406)), self.in_chans)
            config["std"] = channel_stats(cfg.get("std", (0.229, 0.224, 0.225)), self.in_chans)
        return config

    def resolved_source(self) -> dict[str, Any]:
        """What rebuilds this model with no download and no file: the timm architecture, the
        arguments it was built with (timm records them, those of a folder's config.json too) and
        its pretrained config (input size, mean and std)."""
        return {
            "name": self.model.pretrained_cfg.get("architecture") or self.name.split(".")[0],
            "pretrained_cfg": dict(self.model.pretrained_cfg),
            "model_args": dict(getattr(self.model, "_model_args", {})),
        }

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def no_weight_decay(self) -> set[str]:
        names = getattr(self.model, "no_weight_decay", lambda: set())()
        return {f"model.{n}" for n in names}

    def layer_ids(self) -> dict[str, int]:
        """timm's own grouping of the model into stem, blocks and head (as in its layer decay)."""
        if self._layer_ids is None:
            from timm.models import group_parameters

            if not hasattr(self.model, "group_matcher"):
                raise ConfigError(f"timm model {self.name} has no layer groups: set layer_decay to null")
            groups = group_parameters(self.model, self.model.group_matcher(coarse=False), reverse=True)
            self._layer_ids = {f"model.{name}": int(i) for name, i in groups.items()}
        return self._layer_ids

    @property
    def num_layers(self) -> int:
        return max(self.layer_ids().values()) + 1

    def layer_id(self, name: str) -> int:
        return self.layer_ids()[name]

    def save_pretrained(self, folder: str | Path, image_size=None, mean=None, std=None) -> None:
        """timm's hub format (config.json + model.safetensors): ``local-dir:<folder>`` loads it back.

        The preprocessing recorded is the one training used (the datamodule's), which may differ
        from the source checkpoint's when training started from scratch.
        """
        from timm.models import save_for_hf

        size = image_size or self.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        data_config = {"input_size": (self.in_chans, *size)}
        if mean is not None:
            data_config.update(mean=tuple(mean), std=tuple(std))
        model_config = {"label_names": self.class_names} if self.class_names else None
        save_for_hf(
            self.model,
            str(folder),
            model_config=model_config,
            safe_serialization=True,
            data_config=data_config,
        )


def load_hf_vit(
    name_or_path: str, names: list[str], revision: str | None, cache_dir: str | None, dropout: float | None
) -> tuple[nn.Module, Any]:
    """The ViT and its image processor from the hub or a folder, with a head for ``names``."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().is_dir():
        raise CheckpointError(
            f"model.net.name_or_path={name_or_path} is not a folder: give a folder written by "
            "save_pretrained (config.json, model.safetensors, preprocessor_config.json) or a hub id "
            f"such as {HF_DEFAULT}"
        )
    overrides: dict[str, Any] = {}
    if dropout is not None:
        overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    fix = (
        "download it once where the hub is reachable (huggingface-cli download <id>), or set "
        "model.net.name_or_path to a local folder written by save_pretrained (a run's hf_model/ folder)"
    )
    source = dict(revision=revision, cache_dir=cache_dir)
    with hub_errors("the HuggingFace model", name_or_path, fix):
        model = ViTForImageClassification.from_pretrained(
            name_or_path,
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            ignore_mismatched_sizes=True,
            **source,
            **overrides,
        )
    with hub_errors("the image processor of", name_or_path, fix):
        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path, **source)
        except OSError:
            if not Path(name_or_path).expanduser().is_dir():
                raise
            from transformers import ViTImageProcessor

            log.warning("%s has no preprocessor_config.json: ViTImageProcessor defaults", name_or_path)
            processor = ViTImageProcessor()
    return model, processor


class HFViT(nn.Module):
    """A HuggingFace ``ViTForImageClassification`` with a new head for the dataset's classes.

    ``name_or_path`` is a hub id (default ``google/vit-base-patch16-224-in21k``) or a local folder
    written by ``save_pretrained``. The head is re-initialised when its size differs, with the
    label maps built from ``class_names``. The checkpoint's image processor gives the input size
    and normalisation (``data_config``); ``image_size`` asks for another size, reached by
    interpolating the position embeddings. Single-channel images are repeated to RGB.
    ``resolved_source`` rebuilds a fine-tuned model from its checkpoint alone (``resolved_source()``).
    """

    def __init__(
        self,
        name_or_path: str = HF_DEFAULT,
        num_classes: int = 1000,
        class_names: Sequence[str] | None = None,
        image_size: int | None = None,
        in_chans: int = 3,
        revision: str | None = None,
        cache_dir: str | None = None,
        dropout: float | None = None,
        resolved_source: dict[str, Any] | None = None,
    ):
        super().__init__()
        import transformers
        from transformers import ViTConfig, ViTForImageClassification

        names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise ConfigError(f"{len(names)} class names for num_classes={num_classes}: they must agree")
        if resolved_source:  # a fine-tuned checkpoint's: the same model, its weights loaded next
            self.model = ViTForImageClassification(ViTConfig.from_dict(resolved_source["config"]))
            processor = resolved_source["processor"]
            self.processor = getattr(transformers, processor["image_processor_type"]).from_dict(processor)
        else:
            self.model, self.processor = load_hf_vit(name_or_path, names, revision, cache_dir, dropout)
        model_channels = self.model.config.num_channels
        if in_chans != model_channels and not (in_chans == 1 and model_channels == 3):
            raise ConfigError(f"{name_or_path} takes {model_channels}-channel images, the data {in_chans}")
        self.name_or_path = name_or_path
        self.num_classes = num_classes
        self.class_names = names
        self.in_chans = in_chans
        self.image_size = int(image_size or processor_size(self.processor) or self.model.config.image_size)
        self.train()  # from_pretrained returns the model in eval mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1 and self.model.config.num_channels == 3:
            images = images.expand(-1, 3, -1, -1)
        native = self.model.config.image_size
        interpolate = tuple(images.shape[-2:]) != (native, native)
        return self.model(pixel_values=images, interpolate_pos_encoding=interpolate).logits

    @property
    def data_config(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": channel_stats(self.processor.image_mean, self.in_chans),
            "std": channel_stats(self.processor.image_std, self.in_chans),
        }

    def resolved_source(self) -> dict[str, Any]:
        """What rebuilds this model with no download and no folder: its config and image processor."""
        return {
            "config": json.loads(self.model.config.to_json_string(use_diff=False)),
            "processor": json.loads(self.processor.to_json_string()),
        }

    def get_classifier(self) -> nn.Module:
        return self.model.classifier

    def no_weight_decay(self) -> set[str]:
        return {
            name
            for name, _ in self.named_parameters()
            if name.startswith("model.vit.embeddings.")
            and not name.startswith("model.vit.embeddings.patch_embeddings.")
        }

    @property
    def num_layers(self) -> int:
        # embeddings, one per encoder layer, the head (the final norm goes with the last layer, as in timm)
        return self.model.config.num_hidden_layers + 2

    def layer_id(self, name: str) -> int:
        depth = self.model.config.num_hidden_layers
        parts = name.split(".")
        if "embeddings" in parts:
            return 0
        for key in ("layer", "layers"):  # transformers 4 (encoder.layer.N) and 5 (layers.N)
            if key in parts and parts[parts.index(key) + 1].isdigit():
                return int(parts[parts.index(key) + 1]) + 1
        return depth + 1 if name.startswith("model.classifier.") else depth

    def save_pretrained(self, folder: str | Path, image_size=None, mean=None, std=None) -> None:
        """The model (with its label maps) and its image processor, set to the preprocessing used."""
        size = image_size or self.image_size
        height, width = (size, size) if isinstance(size, int) else size
        processor = copy.deepcopy(self.processor)
        processor.size = {"height": int(height), "width": int(width)}
        if mean is not None:  # the model takes RGB even when the data were grey
            channels = self.model.config.num_channels
            processor.image_mean = channel_stats(mean, channels)
            processor.image_std = channel_stats(std, channels)
        self.model.save_pretrained(str(folder))
        processor.save_pretrained(str(folder))


def processor_size(processor: Any) -> int | None:
    """The square side an image processor resizes to (``height`` or ``shortest_edge``)."""
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return get("height") or get("shortest_edge")

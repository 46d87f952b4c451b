"""A HuggingFace transformers ViT as a backbone, speaking timm's interface (models/backbone.py).

The checkpoint's image processor gives the data config; the label maps travel with the model;
``save_pretrained`` writes the folder ``from_pretrained`` loads back.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit_rpe.models.backbone import channel_stats
from vit_rpe.models.pretrained.hub import DOWNLOAD_HINT, check_hub_reachable, hub_errors
from vit_rpe.utils.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

HF_DEFAULT = "google/vit-base-patch16-224-in21k"


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

    # --- the backbone interface ----------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Final-normed tokens [B, 1+N, D]: grey images repeated to RGB, other sizes interpolated."""
        if images.shape[1] == 1 and self.model.config.num_channels == 3:
            images = images.expand(-1, 3, -1, -1)
        native = self.model.config.image_size
        interpolate = tuple(images.shape[-2:]) != (native, native)
        return self.model.vit(pixel_values=images, interpolate_pos_encoding=interpolate).last_hidden_state

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features[:, 0]  # the cls token, as ViTForImageClassification pools
        return pooled if pre_logits else self.model.classifier(pooled)

    def get_classifier(self) -> nn.Module:
        return self.model.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A new head, and label maps of class indices (``class_names`` names them otherwise)."""
        hidden = self.model.config.hidden_size
        self.model.classifier = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        self.class_names = [str(i) for i in range(num_classes)]
        self.model.config.id2label = dict(enumerate(self.class_names))
        self.model.config.label2id = {name: i for i, name in enumerate(self.class_names)}
        self.num_classes = num_classes

    def no_weight_decay(self) -> set[str]:
        """The cls token and position embeddings (the patch projection decays, as in timm)."""
        return {
            name
            for name, _ in self.named_parameters()
            if name.startswith("model.vit.embeddings.")
            and not name.startswith("model.vit.embeddings.patch_embeddings.")
        }

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Embeddings, each encoder layer (the final norm with the last), the head: timm's layout.

        transformers 4 names the layers ``vit.encoder.layer.N``, 5 ``vit.layers.N``.
        """
        layers = r"^model\.vit\.(?:encoder\.)?layers?" + ("" if coarse else r"\.(\d+)\.")
        return {
            "stem": r"^model\.vit\.embeddings\.",
            "blocks": [(layers, None), (r"^model\.vit\.layernorm\.", (99999,))],
        }

    def data_config(self) -> dict[str, Any]:
        """The image processor's input size (or ``image_size``) and normalisation."""
        return {
            "input_size": (self.in_chans, self.image_size, self.image_size),
            "mean": channel_stats(self.processor.image_mean, self.in_chans),
            "std": channel_stats(self.processor.image_std, self.in_chans),
        }

    # --- a pretrained backbone: rebuilt from a checkpoint, exported as a folder ---------------------

    def resolved_source(self) -> dict[str, Any]:
        """What rebuilds this model with no download and no folder: its config and image processor."""
        return {
            "config": json.loads(self.model.config.to_json_string(use_diff=False)),
            "processor": json.loads(self.processor.to_json_string()),
        }

    def save_pretrained(self, folder: str | Path, data_config: dict[str, Any] | None = None) -> None:
        """The model (with its label maps) and its image processor, set to the preprocessing
        training used (``data_config``, the datamodule's)."""
        data_config = dict(data_config or {})
        height, width = (data_config.get("input_size") or (self.in_chans, self.image_size, self.image_size))[
            1:
        ]
        processor = copy.deepcopy(self.processor)
        processor.size = {"height": int(height), "width": int(width)}
        if data_config.get("mean") is not None:  # the model takes RGB even when the data were grey
            channels = self.model.config.num_channels
            processor.image_mean = list(channel_stats(data_config["mean"], channels))
            processor.image_std = list(channel_stats(data_config["std"], channels))
        self.model.save_pretrained(str(folder))
        processor.save_pretrained(str(folder))


def load_hf_vit(
    name_or_path: str, names: list[str], revision: str | None, cache_dir: str | None, dropout: float | None
) -> tuple[nn.Module, Any]:
    """The ViT and its image processor from the hub or a folder, with a head for ``names``."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    is_folder = looks_like_path(name_or_path)
    if is_folder and not Path(name_or_path).expanduser().is_dir():
        raise CheckpointError(
            f"model.net.name_or_path={name_or_path} is not a folder: give a folder written by "
            "save_pretrained (config.json, model.safetensors, preprocessor_config.json) or a hub id "
            f"such as {HF_DEFAULT}"
        )
    overrides: dict[str, Any] = {}
    if dropout is not None:
        overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    fix = (
        f"{DOWNLOAD_HINT.format(repo=name_or_path)}, or set model.net.name_or_path to a local folder "
        "written by save_pretrained (a run's hf_model/ folder, or one that hf download --local-dir wrote)"
    )
    source = dict(revision=revision, cache_dir=cache_dir)
    if not is_folder and not in_hub_cache(name_or_path, revision, cache_dir):
        check_hub_reachable("the HuggingFace model", name_or_path, fix)
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
            if not is_folder:
                raise
            from transformers import ViTImageProcessor

            log.warning("%s has no preprocessor_config.json: ViTImageProcessor defaults", name_or_path)
            processor = ViTImageProcessor()
    return model, processor


def looks_like_path(name: str) -> bool:
    """A hub id is ``owner/name``; anything rooted like a file path is meant as a local folder."""
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def in_hub_cache(repo: str, revision: str | None, cache_dir: str | None) -> bool:
    """Is the model's config.json in the local HuggingFace cache (then no download may be needed)?"""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", cache_dir=cache_dir, revision=revision)
    return isinstance(found, str)


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

"""The one interface every backbone has, in timm's words.

A backbone is an ``nn.Module`` mapping normalised images [B, C, H, W] to logits [B, num_classes].
The task, the optimizer builder, freezing and the run builder call these methods and nothing
else, so the from-scratch ViT, the timm and HuggingFace adapters and a user's own model are
interchangeable (README, "The backbone interface"):

- ``forward_features(x)`` -> tokens [B, L, D] (final-normed); ``forward_head(tokens,
  pre_logits=False)`` -> logits [B, num_classes] (or the pooled features with ``pre_logits``);
  ``forward`` is the two in a row.
- ``get_classifier()`` / ``reset_classifier(num_classes)``: the head, which a frozen backbone
  keeps training, and a new one for another number of classes.
- ``no_weight_decay()``: parameter names exempt from weight decay (besides every 1-D tensor).
- ``group_matcher(coarse=False)``: timm's layer grouping (regexes of the stem, the blocks and
  what goes with the last block, or a callable name -> layer), from which ``layer_ids`` numbers
  the layers for layer-wise lr decay; a parameter no pattern matches is the head, the top layer.
- ``data_config()``: the input the backbone expects, as timm writes it: ``input_size``
  (C, H, W), and ``mean`` / ``std`` only where its weights fix them (absent: the data's own).
  ``timm.data.create_transform(**backbone.data_config())`` preprocesses for it.

A pretrained backbone also rebuilds itself from a checkpoint and exports itself in its
library's format: ``PretrainedBackbone``. Its ``data_config()`` is what the datamodule resizes
and normalises to (build.py); a from-scratch backbone is built for the data instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def get_classifier(self) -> nn.Module: ...

    def reset_classifier(self, num_classes: int) -> None: ...

    def no_weight_decay(self) -> set[str]: ...

    def group_matcher(self, coarse: bool = False) -> dict[str, Any] | Callable[[str], int]: ...

    def data_config(self) -> dict[str, Any]: ...


@runtime_checkable
class PretrainedBackbone(Backbone, Protocol):
    def resolved_source(self) -> dict[str, Any]:
        """What rebuilds the model with no download and no file (stored in every checkpoint)."""
        ...

    def save_pretrained(self, folder: str | Path, data_config: dict[str, Any] | None = None) -> None:
        """The library's own format, with the preprocessing training used (``data_config``)."""
        ...


def missing_methods(net: nn.Module, protocol: type = Backbone) -> list[str]:
    """The methods of ``protocol`` that ``net`` lacks (empty: it is one)."""
    names = {
        name
        for cls in protocol.__mro__
        if cls not in (Protocol, Generic, object)
        for name, value in vars(cls).items()
        if callable(value) and not name.startswith("_")
    }
    return sorted(name for name in names if not callable(getattr(net, name, None)))


def layer_ids(net: nn.Module) -> dict[str, int]:
    """Parameter name -> layer, from the backbone's ``group_matcher`` by timm's own numbering:
    0 the stem, then each block (the final norm with the last), the head on top."""
    from timm.models import group_parameters

    return group_parameters(net, net.group_matcher(coarse=False), reverse=True)


def channel_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel mean/std for ``in_chans`` channels: averaged when the checkpoint had others."""
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return tuple(values)
    return (sum(values) / len(values),) * in_chans

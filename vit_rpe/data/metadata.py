"""The Hydra side of a datamodule: data config keys left null, filled from what it found."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, open_dict


def fill_data_metadata(cfg: DictConfig, datamodule: Any) -> None:
    """Fill ``cfg.data`` keys left null (num_classes, in_chans, image_size) from the datamodule.

    Data configs of folders and HF datasets leave ``num_classes: null``: the datamodule counts the
    classes on disk, and the model configs, which interpolate ``${data.num_classes}``, see the number.
    Call it before the config is resolved.
    """
    with open_dict(cfg.data):
        for key in ("num_classes", "in_chans", "image_size"):
            if cfg.data.get(key, None) is None and hasattr(datamodule, key):
                cfg.data[key] = getattr(datamodule, key)

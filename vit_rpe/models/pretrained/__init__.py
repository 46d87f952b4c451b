"""Pretrained backbones from timm and HuggingFace transformers, with the face of any other backbone.

Each adapter implements the backbone interface (models/backbone.py) and ``PretrainedBackbone``'s
two extras: ``resolved_source()``, the architecture and preprocessing as the hub or folder gave
them (the task stores it in every checkpoint, which then rebuilds the model with no download and
no file), and ``save_pretrained(folder, data_config)``, the library's own format, which a plain
``from_pretrained`` (or ``timm.create_model("local-dir:...")``) loads back.

- ``hub.py``: access to the HuggingFace hub and the one message for weights that cannot be had;
- ``timm.py``: ``TimmBackbone``, any timm model;
- ``hf.py``: ``HFViT``, a transformers ``ViTForImageClassification``.

Relative position encodings and the other attention options belong to the from-scratch
backbone: the adapters take no such arguments (the run's config check names them).
"""

from vit_rpe.models.pretrained.hf import HFViT
from vit_rpe.models.pretrained.timm import TimmBackbone

__all__ = ["HFViT", "TimmBackbone"]

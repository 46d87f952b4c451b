"""Checkpoints at the boundary: read them safely, check they fit the model.

Everything here turns a bad checkpoint into a ``CheckpointError`` that names the file and the
fix, and loads with ``weights_only=True`` (no pickled code runs). Formats:

- Lightning checkpoints of ``vit_rpe.tasks.ImageClassifier`` (``*.ckpt``): weights, optimizer,
  loop state, and the backbone config in ``hyper_parameters``;
- plain state dicts of the backbone (``*.pt``, ``*.pth``, ``*.bin``, ``*.safetensors``), keys as
  in ``net.state_dict()`` (a ``net.`` prefix, as in the task's state dict, is accepted).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit_rpe.utils.errors import CheckpointError

log = logging.getLogger("vit_rpe.checkpoint")

SAFETENSORS_SUFFIXES = (".safetensors",)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents on CPU; a clear error when it is missing or not a checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    if path.is_dir():
        example = path / "checkpoints" / "last.ckpt"
        raise CheckpointError(f"checkpoint {path} is a directory: give a file, e.g. {example}")
    if path.suffix not in SAFETENSORS_SUFFIXES and (reason := not_torch_save(path)):
        raise CheckpointError(
            f"cannot read checkpoint {path}: {reason}; give a .ckpt from a run's checkpoints/ folder "
            "(or a .pt/.safetensors state dict)"
        )
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or holding pickled objects we refuse to run
        # A pickled object names its class ("Unsupported global"); other bytes (an image, text)
        # also fail the weights-only unpickler, and are simply not a checkpoint.
        if "unsupported global" in str(err).lower():
            raise CheckpointError(
                f"cannot read checkpoint {path}: it holds pickled Python objects, which are never loaded "
                "(weights_only=True, so a checkpoint cannot run code); save tensors in plain dicts and "
                "lists, e.g. torch.save(model.state_dict(), path)"
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0][:200]}): "
            "the file is corrupt or not a PyTorch/safetensors checkpoint"
        ) from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, not a dict of tensors")
    return dict(loaded)


# The first bytes of files users mistake for checkpoints, and what they are.
FILE_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"{": "a JSON file",
}


def not_torch_save(path: Path) -> str | None:
    """Why the file cannot be torch.save's (its zip archive starts with "PK", the legacy format
    with a pickle opcode, 0x80), naming what it is when known; None when it may be one."""
    with path.open("rb") as file:
        head = file.read(12)
    if head.startswith((b"PK", b"\x80")):
        return None
    if not head:
        return "the file is empty"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "it is a WEBP image, not a checkpoint"
    for magic, what in FILE_SIGNATURES.items():
        if head.startswith(magic):
            return f"it is {what}, not a checkpoint"
    return "the file is corrupt or not a PyTorch/safetensors checkpoint"


def is_task_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    hparams = ckpt.get("hyper_parameters")
    return "state_dict" in ckpt and isinstance(hparams, Mapping) and isinstance(hparams.get("net"), Mapping)


def read_task_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of ``ImageClassifier`` (with its backbone config), or an error."""
    ckpt = read_checkpoint(path)
    if not is_task_checkpoint(ckpt):
        what = "a plain state dict, not" if all(isinstance(v, torch.Tensor) for v in ckpt.values()) else "not"
        raise CheckpointError(
            f"{path} is {what} a Lightning checkpoint of vit_rpe.tasks.ImageClassifier (no state_dict and "
            "hyper_parameters.net): use a .ckpt from a run's checkpoints/ folder, or load plain backbone "
            "weights with vit_rpe.utils.checkpoint.load_net_weights"
        )
    return ckpt


def state_dict_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """'' when the keys and tensor shapes agree, else a short description of what differs.

    Besides tensors a state dict holds modules' extra states (``_extra_state``: the Performer's
    redraw schedule), compared by presence only.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given
        and isinstance(expected[k], torch.Tensor)
        and tuple(getattr(given[k], "shape", ())) != tuple(expected[k].shape)
    ]
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)):
        if keys:
            parts.append(f"{len(keys)} {name} (e.g. {', '.join(keys[:3])})")
    return "; ".join(parts)


# torch.compile wraps a module in one that holds it as ``_orig_mod``, so every name under a compiled
# module gets this prefix. Checkpoints store the plain names; these helpers are the one place
# that adds or removes it.
COMPILED_PREFIX = "_orig_mod."


def plain_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict with torch.compile's prefix removed from every name: how checkpoints store it."""
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in state.items()}


def renamed_for(module: nn.Module, state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict (plain or compiled names) under ``module``'s own names, compiled parts or not."""
    own = {k.replace(COMPILED_PREFIX, ""): k for k in module.state_dict()}
    return {own.get(k, k): v for k, v in plain_names(state).items()}


def uncompiled(module: nn.Module) -> nn.Module:
    """The module torch.compile wrapped; the module itself when it is not compiled."""
    return getattr(module, "_orig_mod", module)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under plain names, as checkpoints store it."""
    return plain_names(model.state_dict())


def load_weights(
    module: nn.Module, state: Mapping[str, Any], strict: bool = True, source: str | Path = "the checkpoint"
) -> nn.Module:
    """Load ``state`` into ``module``, either of them compiled or not; a clear error when it does not fit.

    With ``strict=False`` missing and unexpected names are allowed, other shapes are not. Position
    tables saved at another patch grid (another image size) load resampled: the modules that hold
    them do it in their ``_load_from_state_dict`` (models/vit.py, models/rpe.py).
    """
    state = plain_names(state)
    try:
        module.load_state_dict(renamed_for(module, state), strict=strict)
    except RuntimeError as err:
        mismatch = state_dict_mismatch(model_state(module), state) or str(err).splitlines()[0][:300]
        raise CheckpointError(f"weights in {source} do not fit this model: {mismatch}") from None
    return module


def check_fits(model: nn.Module, ckpt: Mapping[str, Any], path: str | Path) -> None:
    """The checkpoint's weights have the model's parameter names and shapes."""
    mismatch = state_dict_mismatch(model_state(model), plain_names(ckpt.get("state_dict", ckpt)))
    if mismatch:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: {mismatch}. It was saved from another model "
            "config: use the config it was trained with (config.yaml in its run directory)"
        )


def load_net_weights(net: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load backbone weights from a plain state dict or a task checkpoint, safely, into ``net``."""
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"] if is_task_checkpoint(ckpt) else ckpt
    if not all(isinstance(v, torch.Tensor) or k.endswith("_extra_state") for k, v in state.items()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    state = plain_names(state)
    if state and all(k.startswith("net.") for k in state):
        state = {k[len("net.") :]: v for k, v in state.items()}
    # Extra states (the Performer's redraw schedule) only matter to continue training, and formats
    # such as safetensors cannot hold them: a file without them keeps the backbone's own.
    state |= {k: v for k, v in model_state(net).items() if k.endswith("_extra_state") and k not in state}
    return load_weights(net, state, strict=strict, source=path)

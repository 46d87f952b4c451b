"""Weights in and out of compiled modules: checkpoints hold plain names, whatever was compiled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vit_rpe.utils.checkpoint import load_weights, plain_names, renamed_for, uncompiled
from vit_rpe.utils.errors import CheckpointError


class Task(nn.Module):
    """A task's shape: a backbone under ``net`` and a buffer of its own."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
        self.register_buffer("step", torch.zeros(()))


def randomised(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.copy_(torch.randn_like(tensor))
    return module


def test_plain_names_drop_every_compile_prefix():
    state = {"net._orig_mod.0.weight": 1, "_orig_mod.net.0.bias": 2, "step": 3}
    assert plain_names(state) == {"net.0.weight": 1, "net.0.bias": 2, "step": 3}


@pytest.mark.parametrize("source_compiled", [False, True])
@pytest.mark.parametrize("target_compiled", ["none", "net", "whole"])
def test_load_weights_between_compiled_and_plain_modules(source_compiled, target_compiled):
    source = randomised(Task())
    if source_compiled:
        source.net = torch.compile(source.net)
    target = Task()
    if target_compiled == "net":
        target.net = torch.compile(target.net)
    loaded_into = torch.compile(target) if target_compiled == "whole" else target
    assert any("_orig_mod" in k for k in source.state_dict()) == source_compiled

    load_weights(loaded_into, source.state_dict())
    expected = plain_names(source.state_dict())
    assert plain_names(loaded_into.state_dict()).keys() == expected.keys()
    for name, value in plain_names(loaded_into.state_dict()).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    assert set(renamed_for(loaded_into, expected)) == set(loaded_into.state_dict())


def test_uncompiled_is_the_wrapped_module():
    net = nn.Linear(2, 2)
    assert uncompiled(torch.compile(net)) is net and uncompiled(net) is net


def test_load_weights_of_another_shape_is_a_checkpoint_error():
    other = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5))
    with pytest.raises(CheckpointError, match="with another shape"):
        load_weights(Task().net, other.state_dict(), source="other.ckpt")

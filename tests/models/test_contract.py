"""One contract for every attention kernel and RPE family, ours and a user's.

Parametrised over the registries (vit_rpe.models.KERNELS, RPES) plus the example module of
docs/attention.md, which is extracted from the doc, written as a user's file and imported by path,
exactly as a user would use it.
"""

from __future__ import annotations

import re
import sys

import pytest
import torch

from tests.conftest import FAST, LEARNS, ROOT, compose_config
from tests.helpers import assert_scores_depend_on_the_2d_offset_only
from vit_rpe.models import KERNELS, RPES, AttentionKernel, RelativePositionMask, RotaryPositionEmbedding
from vit_rpe.models.attention import MultiHeadSelfAttention, build_kernel
from vit_rpe.models.rpe import build_rpe
from vit_rpe.train import train
from vit_rpe.utils.errors import ConfigError

DOC = ROOT / "docs" / "attention.md"
EXAMPLE_KERNELS = ["my_kernels:LearnedTemperatureAttention"]
EXAMPLE_FAMILIES = ["my_kernels:GaussianRPE"]
KERNEL_NAMES = [*sorted(KERNELS), *EXAMPLE_KERNELS]
FAMILY_NAMES = [*sorted(RPES), *EXAMPLE_FAMILIES]
GRID, HEADS, HEAD_DIM = (3, 4), 2, 8


def doc_example() -> str:
    """The code block after the ``<!-- example: my_kernels.py -->`` marker of docs/attention.md."""
    found = re.search(r"<!-- example: my_kernels\.py -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert found, "docs/attention.md lost its example"
    return found.group(1)


@pytest.fixture(scope="module", autouse=True)
def user_module(tmp_path_factory):
    """The doc's example as the user's own file, importable as ``my_kernels``."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "my_kernels.py").write_text(doc_example())
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("my_kernels", None)


def family(name: str, prefix: int = 1, **options) -> torch.nn.Module:
    """The family ``name`` on a small grid, in float64, its parameters moved off their init."""
    torch.manual_seed(0)
    module = build_rpe(name, GRID, HEADS, prefix, head_dim=HEAD_DIM, **options).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def mask_impls(mask: RelativePositionMask) -> list[str]:
    return ["quadratic", "dense", "fft", *(["kron"] if mask.separable else [])]


def qkv(tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [0.7 * torch.randn(2, HEADS, tokens, HEAD_DIM, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("kernel_name", KERNEL_NAMES)
def test_kernel_output_is_its_dense_attention_matrix_times_v(kernel_name):
    """Without a mask and with every mask family, in every impl the kernel claims (rpe_impls)."""
    kernel = build_kernel(kernel_name, HEAD_DIM).double().eval()
    masks = [None]
    for name in FAMILY_NAMES:
        if issubclass(RPES.resolve(name), RelativePositionMask):
            for impl in mask_impls(family(name)):
                if impl in kernel.rpe_impls:
                    masks.append(family(name, impl=impl))
    assert len(masks) > 1 or not kernel.rpe_impls
    for mask in masks:
        q, k, v = qkv(1 + GRID[0] * GRID[1])
        expected = kernel.attention_matrix(q, k, mask).double() @ v
        torch.testing.assert_close(kernel(q, k, v, mask), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family_name", ["none", *FAMILY_NAMES])
@pytest.mark.parametrize("kernel_name", KERNEL_NAMES)
def test_every_parameter_gets_a_gradient(kernel_name, family_name):
    """Kernel x family in one attention layer (the impls the kernel claims: auto otherwise)."""
    torch.manual_seed(0)
    kernel = build_kernel(kernel_name, HEAD_DIM)
    rpe = None if family_name == "none" else build_rpe(family_name, GRID, HEADS, 1, head_dim=HEAD_DIM)
    if isinstance(rpe, RelativePositionMask) and rpe.impl not in kernel.rpe_impls:
        pytest.skip(f"{kernel_name} does not claim rpe.impl={rpe.impl}")
    layer = MultiHeadSelfAttention(HEADS * HEAD_DIM, HEADS, kernel, rpe).train()
    x = torch.randn(3, 1 + GRID[0] * GRID[1], HEADS * HEAD_DIM)
    layer(x).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_family_contract(family_name):
    """Masks: positive, ``log_mask`` its logarithm, every product equal to the dense one. Rotary:
    prefix tokens untouched, scores of the same contents depend on the 2-D offset only."""
    module = family(family_name)
    if isinstance(module, RelativePositionMask):
        m = module.mask()
        assert m.shape == (HEADS, module.num_tokens, module.num_tokens) and (m > 0).all()
        torch.testing.assert_close(module.log_mask(), m.log())
        z = torch.randn(2, HEADS, module.num_tokens, 5, dtype=torch.float64)
        for impl in mask_impls(module):
            torch.testing.assert_close(module.matmul(z, impl), m @ z, rtol=1e-9, atol=1e-9)
        return
    assert isinstance(module, RotaryPositionEmbedding)
    assert_scores_depend_on_the_2d_offset_only(module)


def test_the_doc_example_trains_from_the_command_line(tmp_path, user_module):
    """The doc's command: the user's kernel and mask family by import path, through train(); it
    learns (digits: chance is 0.1) and the checkpoint records the paths."""
    cfg = compose_config(
        "train",
        [
            *FAST,
            *LEARNS,
            "trainer.max_epochs=2",
            "model.net.patch_size=4",
            "model.net.attention=my_kernels:LearnedTemperatureAttention",
            "rpe=exp",
            "model.net.rpe=my_kernels:GaussianRPE",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.25
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "my_kernels:LearnedTemperatureAttention" in saved and "my_kernels:GaussianRPE" in saved


def test_a_mask_of_an_impl_the_kernel_does_not_claim_is_refused():
    class NoMask(AttentionKernel):
        def __init__(self, head_dim, attn_drop=0.0):
            super().__init__()

    kernel = NoMask(HEAD_DIM)
    with pytest.raises(
        ConfigError, match=r"does not compute with an RPE mask of model\.net\.rpe_kwargs\.impl=quadratic"
    ):
        MultiHeadSelfAttention(
            HEADS * HEAD_DIM, HEADS, kernel, build_rpe("exp", GRID, HEADS, impl="quadratic")
        )
    rope = build_rpe("rope", GRID, HEADS, head_dim=HEAD_DIM)  # rotary: nothing asked of the kernel
    assert MultiHeadSelfAttention(HEADS * HEAD_DIM, HEADS, kernel, rope).rpe is rope

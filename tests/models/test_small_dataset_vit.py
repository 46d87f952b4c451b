"""The small-dataset ViT (Lee, Lee and Song 2021): shifted patch tokenization (SPT) and locality
self-attention (LSA), against written-out references."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import qkv
from vit_rpe.models import VisionTransformer
from vit_rpe.models.attention import build_kernel
from vit_rpe.models.embed import ShiftedPatchEmbed
from vit_rpe.models.rpe import build_rpe
from vit_rpe.utils.errors import ConfigError


def moved(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The image translated by (dy, dx) pixels, pixel by pixel; zeros where nothing comes in."""
    out = torch.zeros_like(image)
    _, h, w = image.shape
    for y in range(h):
        for x in range(w):
            if 0 <= y - dy < h and 0 <= x - dx < w:
                out[:, y, x] = image[:, y - dy, x - dx]
    return out


def test_spt_stacks_the_image_with_its_four_diagonal_half_patch_shifts():
    spt = ShiftedPatchEmbed(img_size=(8, 12), patch_size=4, in_chans=2, embed_dim=16)
    images = torch.randn(3, 2, 8, 12, dtype=torch.float64)
    got = spt.shifted(images)
    for b in range(3):
        expected = torch.cat(
            [images[b], *(moved(images[b], dy, dx) for dy, dx in ((-2, -2), (-2, 2), (2, -2), (2, 2)))]
        )
        assert torch.equal(got[b], expected)


def test_spt_patches_are_the_flattened_cells_of_the_grid_row_by_row():
    spt = ShiftedPatchEmbed(img_size=(4, 6), patch_size=2, in_chans=1, embed_dim=8)
    stacked = torch.arange(1 * 5 * 4 * 6, dtype=torch.float64).reshape(1, 5, 4, 6)
    got = spt.patches(stacked)
    assert got.shape == (1, 6, 5 * 2 * 2)
    cells = [
        stacked[0, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(-1) for r in range(2) for c in range(3)
    ]
    assert torch.equal(got[0], torch.stack(cells))
    tokens = spt.double()(torch.randn(2, 1, 4, 6, dtype=torch.float64))
    assert tokens.shape == (2, 6, 8) and spt.grid_size == (2, 3)
    x = torch.randn(1, 1, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(spt(x), spt.proj(spt.norm(spt.patches(spt.shifted(x)))))


@pytest.mark.parametrize(
    ("patch", "message"), [(1, "needs model.net.patch_size >= 2"), (3, "does not divide")]
)
def test_spt_refuses_a_patch_size_that_does_not_fit(patch, message):
    with pytest.raises(ConfigError, match=message):
        ShiftedPatchEmbed(img_size=8, patch_size=patch, in_chans=1, embed_dim=8)


@pytest.mark.parametrize("rpe_family", [None, "exp", "general"])
@pytest.mark.parametrize("prefix", [0, 1])
def test_lsa_is_softmax_with_a_learned_temperature_and_no_diagonal(rpe_family, prefix):
    torch.manual_seed(0)
    kernel = build_kernel("lsa", 8).double()
    with torch.no_grad():
        kernel.log_temperature.fill_(math.log(1.7))
    rpe = None if rpe_family is None else build_rpe(rpe_family, (3, 3), 2, prefix).double()
    q, k, v = qkv(2, 9 + prefix)
    scores = q @ k.transpose(-2, -1) / 1.7
    if rpe is not None:
        scores = scores + rpe.log_mask()
    eye = torch.eye(9 + prefix, dtype=torch.bool)
    weights = scores.masked_fill(eye, float("-inf")).softmax(-1)
    torch.testing.assert_close(kernel(q, k, v, rpe), weights @ v)
    torch.testing.assert_close(kernel.attention_matrix(q, k, rpe).double(), weights, rtol=1e-5, atol=1e-6)
    assert (kernel.attention_matrix(q, k, rpe).diagonal(dim1=-2, dim2=-1) == 0).all()


def test_lsa_starts_at_the_usual_scale_and_learns_its_temperature():
    kernel = build_kernel("lsa", 16)
    assert kernel.log_temperature.exp().item() == pytest.approx(4.0)  # sqrt(16)
    q, k, v = (x.float().requires_grad_() for x in qkv(2, 10, d=16))
    kernel(q, k, v).square().sum().backward()
    assert kernel.log_temperature.grad is not None and kernel.log_temperature.grad != 0


def test_the_sl_vit_backbone_runs_with_every_kernel_it_combines_with():
    for attention in ("lsa", "softmax", "performer", "linear"):
        net = VisionTransformer(
            img_size=8,
            patch_size=2,
            in_chans=3,
            num_classes=4,
            embed_dim=16,
            depth=1,
            num_heads=2,
            patch_embed="spt",
            attention=attention,
            rpe="exp",
        )
        out = net(torch.randn(2, 3, 8, 8))
        out.sum().backward()
        assert out.shape == (2, 4) and all(p.grad is not None for p in net.parameters() if p.requires_grad)

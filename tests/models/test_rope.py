"""2-D RoPE (rpe=rope) against a brute-force float64 reference: rotations built entry by entry
from token coordinates, scores that depend on the 2-D offset alone, cls tokens left as they are."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import assert_scores_depend_on_the_2d_offset_only
from vit_rpe.models import VisionTransformer
from vit_rpe.models.attention import MultiHeadSelfAttention, build_kernel
from vit_rpe.models.rope import RoPE2d
from vit_rpe.models.rpe import build_rpe
from vit_rpe.utils.errors import ConfigError

GRID = (3, 4)
VARIANTS = ("axial", "mixed")


def rope(variant, prefix=0, heads=2, head_dim=8, grid=GRID):
    torch.manual_seed(0)
    module = build_rpe("rope", grid, heads, prefix, head_dim=head_dim, variant=variant).double()
    if variant == "mixed":  # away from the init, which has structure (right angles)
        with torch.no_grad():
            module.freqs.add_(0.3 * torch.randn_like(module.freqs))
    return module


def brute_force_rotations(module) -> torch.Tensor:
    """[H, L, d, d]: the block-diagonal rotation of every token, one 2x2 block at a time; identity
    for the prefix tokens. Pair c of a grid token at (y, x) turns by y * f_rows[c] + x * f_cols[c]."""
    f = module.frequencies().double().expand(2, module.num_heads, -1)  # [2, H, d/2]
    hg, wg = module.grid_size
    p, d = module.num_prefix_tokens, module.head_dim
    out = torch.zeros(module.num_heads, p + hg * wg, d, d, dtype=torch.float64)
    for h in range(module.num_heads):
        for t in range(p):
            out[h, t] = torch.eye(d, dtype=torch.float64)
        for y in range(hg):
            for x in range(wg):
                t = p + y * wg + x
                for c in range(d // 2):
                    a = y * f[0, h, c] + x * f[1, h, c]
                    out[h, t, 2 * c : 2 * c + 2, 2 * c : 2 * c + 2] = torch.stack(
                        [torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])]
                    )
    return out


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("variant", VARIANTS)
def test_rotation_matches_brute_force(variant, prefix):
    module = rope(variant, prefix)
    x = torch.randn(2, 2, module.num_tokens, 8, dtype=torch.float64)
    expected = torch.einsum("hlij,bhlj->bhli", brute_force_rotations(module), x)
    torch.testing.assert_close(module.rotate(x), expected, rtol=1e-12, atol=1e-12)
    if prefix:  # the cls token is not rotated
        assert torch.equal(module.rotate(x)[:, :, :prefix], x[:, :, :prefix])


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_depend_only_on_the_2d_offset(variant, prefix):
    assert_scores_depend_on_the_2d_offset_only(rope(variant, prefix=prefix, grid=(4, 5)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_axial_pairs_follow_their_axis(variant):
    """Axial: the first d/4 pairs turn with the row only, the last d/4 with the column only; mixed:
    every pair with both."""
    f = rope(variant).frequencies().expand(2, 2, -1)  # [2, H, d/2]
    if variant == "axial":
        assert (f[0, :, :2] > 0).all() and (f[0, :, 2:] == 0).all()
        assert (f[1, :, :2] == 0).all() and (f[1, :, 2:] > 0).all()
    else:
        assert (f != 0).all()


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("variant", VARIANTS)
def test_softmax_layer_matches_dense_reference_and_gradcheck(variant, prefix):
    """The layer (rotate, then SDPA) against softmax((R q)(R k)^T / sqrt(d)) v written out with the
    brute-force rotations; gradcheck through q, k and the learned frequencies."""
    module = rope(variant, prefix)
    kernel = build_kernel("softmax", 8)
    q, k, v = torch.randn(3, 2, 2, module.num_tokens, 8, dtype=torch.float64)
    rot = brute_force_rotations(module)
    rq, rk = (torch.einsum("hlij,bhlj->bhli", rot, t) for t in (q, k))
    expected = ((rq @ rk.transpose(-2, -1)) / math.sqrt(8)).softmax(-1) @ v
    torch.testing.assert_close(kernel(*module(q, k), v), expected, rtol=1e-10, atol=1e-10)

    params = list(module.parameters())

    def layer(q, k, v, *freqs):
        return kernel(*module(q, k), v)

    inputs = [t.clone().requires_grad_(True) for t in (q[:1], k[:1], v[:1])]
    assert torch.autograd.gradcheck(layer, (*inputs, *params))


@pytest.mark.parametrize("name", ["performer", "linear"])
def test_feature_kernels_take_the_rotated_q_and_k(name):
    """Linear and Performer: rotation before the feature map (docs/attention.md), through the layer,
    cls token included."""
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention(
        16, 2, build_kernel(name, 8), rpe=build_rpe("rope", GRID, 2, 1, head_dim=8)
    )
    x = torch.randn(2, 1 + GRID[0] * GRID[1], 16)
    q, k, v = layer.heads(x)
    out = layer.kernel(*layer.rpe(q, k), v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(layer(x), layer.proj(out))
    torch.testing.assert_close(layer(x, cls_only=True), layer.proj(out[:, :1]))


def test_performer_with_rope_estimates_softmax_with_rope():
    """E[phi(R_i q).phi(R_j k)] = exp((R_i q).(R_j k) / sqrt(d)): with many random features the
    Performer's RoPE attention approaches the softmax's (and is far from it without the rotation)."""
    module = rope("mixed", prefix=1, head_dim=8)
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        0.5 * torch.randn(1, 2, module.num_tokens, 8, generator=g, dtype=torch.float64) for _ in range(3)
    )
    torch.manual_seed(0)
    performer = build_kernel("performer", 8, nb_features=8192).double()
    softmax = build_kernel("softmax", 8)
    rq, rk = module(q, k)
    target = softmax(rq, rk, v)
    assert (performer(rq, rk, v) - target).abs().max() < 0.02
    assert (softmax(q, k, v) - target).abs().max() > 0.05


def test_softmax_with_rope_never_makes_the_score_matrix():
    """Rotate, then the fused kernel: no [L, L] tensor is made, forward or backward (the same
    check as the masks' in test_attention.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    module = rope("mixed", prefix=1).float()
    tokens = module.num_tokens
    kernel = build_kernel("softmax", 8).train()

    class Scores(TorchDispatchMode):
        made = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.shape[-2:] == (tokens, tokens):
                    self.made = True
            return out

    q, k, v = (torch.randn(2, 2, tokens, 8, requires_grad=True) for _ in range(3))
    with Scores() as mode:
        kernel(*module(q, k), v).sum().backward()
    assert not mode.made


@pytest.mark.parametrize("variant", VARIANTS)
def test_set_grid_size_rotates_by_the_new_grid(variant):
    """Another resolution: the learned frequencies stay, the positions are the new grid's, and the
    scores still depend on the offset alone."""
    module = rope(variant, prefix=1)
    freqs = module.frequencies().clone()
    module.set_grid_size((5, 2))
    assert module.grid_size == (5, 2) and module.num_tokens == 11
    assert torch.equal(module.frequencies(), freqs)
    x = torch.randn(1, 2, 11, 8, dtype=torch.float64)
    expected = torch.einsum("hlij,bhlj->bhli", brute_force_rotations(module), x)
    torch.testing.assert_close(module.rotate(x), expected, rtol=1e-12, atol=1e-12)


def test_a_vit_with_rope_runs_at_another_grid_after_set_grid_size():
    torch.manual_seed(0)
    size = dict(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2)
    net = VisionTransformer(**size, pos_embed="none", rpe="rope", rpe_kwargs={"variant": "mixed"})
    net.blocks[0].attn.rpe.set_grid_size((6, 4))
    assert net.forward_features(torch.randn(2, 1, 12, 8)).shape == (2, 1 + 24, 16)


def test_rope_configuration_errors():
    with pytest.raises(ConfigError, match="rpe=rope needs a head dimension divisible by 4"):
        build_rpe("rope", GRID, 2, head_dim=6)
    with pytest.raises(ConfigError, match=r"unknown model\.net\.rpe_kwargs\.variant 'diagonal'"):
        build_rpe("rope", GRID, 2, head_dim=8, variant="diagonal")
    with pytest.raises(ConfigError, match="bad option for rpe=rope"):
        build_rpe("rope", GRID, 2, head_dim=8, impl="kron")
    assert isinstance(build_rpe("rope", GRID, 2, head_dim=8, distance=None, impl=None), RoPE2d)


def test_rope_theta_defaults_follow_heo_et_al():
    assert rope("axial").theta == 100.0 and rope("mixed").theta == 10.0
    module = build_rpe("rope", GRID, 2, head_dim=8, theta=1000.0)
    assert module.frequencies()[0, 0, 1].item() == pytest.approx(1000.0 ** (-1 / 2))

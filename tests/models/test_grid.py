"""Another image size, same patch size: ``set_grid_size`` moves a trained network to another patch
grid, and a state dict saved at another grid loads resampled (docs/resolution.md)."""

from __future__ import annotations

import pytest
import torch

from vit_rpe.models import VisionTransformer
from vit_rpe.models.attention import KERNELS
from vit_rpe.models.embed import sincos_2d
from vit_rpe.models.rpe import RPES, RelativePositionMask, build_rpe
from vit_rpe.utils.errors import ConfigError

# every (family, distance, impl) a mask can be built with, each rotary family (no mask: no
# distance or impl), and none
RPE_IMPLS = (
    [("none", "l1", "auto")]
    + [
        (family, distance, impl)
        for family, cls in RPES.items()
        if issubclass(cls, RelativePositionMask)
        for distance in ("l1", "l2")
        for impl in ("quadratic", "dense", "kron", "fft")
        if impl != "kron" or (family == "exp" and distance == "l1")
    ]
    + [(family, None, None) for family, cls in RPES.items() if not issubclass(cls, RelativePositionMask)]
)


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


@pytest.mark.parametrize("family", ["exp", "poly"])
@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_distance_masks_at_a_new_grid_equal_a_fresh_modules_with_the_same_parameters(family, distance):
    moved = randomised(build_rpe(family, (3, 3), 2, num_prefix_tokens=1, distance=distance))
    moved.set_grid_size((5, 4))
    fresh = build_rpe(family, (5, 4), 2, num_prefix_tokens=1, distance=distance)
    fresh.load_state_dict(moved.state_dict())
    assert moved.mask().shape == (2, 21, 21)
    assert torch.equal(moved.mask(), fresh.mask())
    assert torch.equal(moved.log_mask_offsets(), fresh.log_mask_offsets())


def test_the_general_table_is_resampled_keeping_the_zero_offset_and_the_cls_terms():
    rpe = randomised(build_rpe("general", (3, 3), 2, num_prefix_tokens=1))
    table, cls = rpe.bias.detach().clone(), rpe.cls_logit.detach().clone()
    rpe.set_grid_size((5, 5))
    assert rpe.bias.shape == (2, 9, 9)
    # bicubic, align_corners=False: the centre (dy = dx = 0) lands on a source pixel exactly
    torch.testing.assert_close(rpe.bias[:, 4, 4], table[:, 2, 2])
    assert torch.equal(rpe.cls_logit, cls)
    assert torch.equal(rpe.log_mask()[:, 0, 1:], cls[:, None].expand(2, 25))
    flat = build_rpe("general", (3, 3), 1)
    with torch.no_grad():
        flat.bias.fill_(0.7)
    flat.set_grid_size((6, 4))
    torch.testing.assert_close(flat.bias, torch.full((1, 11, 7), 0.7))


@pytest.mark.parametrize(
    ("family", "distance", "small", "large"),
    [
        ("exp", "l1", "quadratic", "kron"),
        ("poly", "l2", "quadratic", "fft"),
        ("general", "l1", "quadratic", "fft"),
    ],
)
def test_auto_picks_the_implementation_of_the_new_grid(family, distance, small, large):
    rpe = build_rpe(family, (4, 4), 1, distance=distance, impl="auto")
    assert rpe.impl == small
    rpe.set_grid_size((60, 60))
    assert rpe.impl == large
    rpe.set_grid_size((4, 4))
    assert rpe.impl == small


def tiny_vit(img_size, attention="softmax", rpe="none", distance="l1", impl="auto", **kwargs):
    torch.manual_seed(0)
    net = VisionTransformer(
        img_size=img_size,
        patch_size=2,
        in_chans=1,
        num_classes=3,
        embed_dim=16,
        depth=1,
        num_heads=2,
        attention=attention,
        rpe=rpe,
        rpe_kwargs={} if impl is None else {"distance": distance, "impl": impl},
        **kwargs,
    )
    return randomised(net).eval()


@pytest.mark.parametrize(("family", "distance", "impl"), RPE_IMPLS)
@pytest.mark.parametrize("attention", sorted(KERNELS))
def test_every_kernel_and_rpe_implementation_runs_at_a_new_grid(attention, family, distance, impl):
    """Moved from a 4x4 to a 5x3 grid, the network gives the numbers of the dense reference at that
    grid, and of a network built there that loads the 4x4 state dict (the checkpoint path)."""
    images = torch.randn(2, 1, 10, 6)
    moved = tiny_vit(8, attention, family, distance, impl)
    moved.set_grid_size(moved.grid_size_for((10, 6)))
    assert moved.grid_size == (5, 3)
    out = moved(images)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    loaded = tiny_vit((10, 6), attention, family, distance, impl)
    loaded.load_state_dict(tiny_vit(8, attention, family, distance, impl).state_dict())
    torch.testing.assert_close(loaded(images), out)
    if impl is not None and family != "none":
        reference = tiny_vit(8, attention, family, distance, "dense")
        reference.load_state_dict(tiny_vit(8, attention, family, distance, impl).state_dict())
        reference.set_grid_size((5, 3))
        torch.testing.assert_close(reference(images), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos2d", "none"])
def test_the_network_at_its_own_grid_is_unchanged_and_position_embeddings_follow(pos_embed):
    net = tiny_vit(8, rpe="general", pos_embed=pos_embed)
    images = torch.randn(2, 1, 8, 8)
    before = net(images)
    net.set_grid_size((4, 4))
    assert torch.equal(net(images), before)
    net.set_grid_size((6, 5))
    assert net.patch_embed.img_size == (12, 10)
    if pos_embed == "learned":
        assert net.pos_embed.shape == (1, 30, 16)
    if pos_embed == "sincos2d":
        assert torch.equal(net.pos_embed_fixed[0], sincos_2d((6, 5), 16))
    assert net(torch.randn(2, 1, 12, 10)).shape == (2, 3)


def test_an_image_size_the_patch_does_not_divide_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"data.image_size=9 is not divisible by the model's patch size 2"):
        tiny_vit(8).grid_size_for(9)


@pytest.mark.parametrize("attention", ["softmax", "performer"])
def test_a_network_trained_where_auto_is_quadratic_runs_kron_at_a_large_grid(attention):
    """exp (l1) at 4x4 runs the quadratic product; moved to 20x20, auto picks kron, with the numbers
    of the dense reference there."""
    moved = tiny_vit(8, attention, "exp")
    assert moved.blocks[0].attn.rpe.impl == "quadratic"
    moved.set_grid_size((20, 20))
    assert moved.blocks[0].attn.rpe.impl == "kron"
    reference = tiny_vit(8, attention, "exp", impl="dense")
    reference.set_grid_size((20, 20))
    images = torch.randn(1, 1, 40, 40)
    torch.testing.assert_close(moved(images), reference(images), rtol=1e-4, atol=1e-5)


def test_a_state_dict_file_saved_at_another_size_loads_resampled(tmp_path):
    """The loading path (load_net_weights: plain state dicts and task checkpoints) resamples the
    position embedding and general's tables: the same network as moving the saved one."""
    from vit_rpe.utils.checkpoint import load_net_weights

    saved = tiny_vit(8, "softmax", "general")
    torch.save(saved.state_dict(), tmp_path / "net.pt")
    loaded = load_net_weights(tiny_vit(12, "softmax", "general"), tmp_path / "net.pt")
    saved.set_grid_size((6, 6))
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

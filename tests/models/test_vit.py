"""The from-scratch ViT: shapes, gradients and clear errors for every embedding choice."""

import itertools

import pytest
import torch

from vit_rpe.models import VisionTransformer
from vit_rpe.models.embed import sincos_2d
from vit_rpe.utils.errors import ConfigError

TINY = dict(img_size=(8, 12), in_chans=3, num_classes=7, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)


@pytest.mark.parametrize(
    "patch_embed,pos_embed,pool",
    list(itertools.product(["linear", "conv_stem"], ["learned", "sincos2d", "none"], ["cls", "mean"])),
)
def test_shapes_and_every_parameter_gets_a_gradient(patch_embed, pos_embed, pool):
    torch.manual_seed(0)
    net = VisionTransformer(**TINY, patch_size=2, patch_embed=patch_embed, pos_embed=pos_embed, pool=pool)
    images = torch.randn(3, 3, 8, 12)
    tokens = net.forward_features(images)
    assert net.grid_size == (4, 6)
    assert tokens.shape == (3, 24 + (pool == "cls"), 32)
    logits = net(images)
    assert logits.shape == (3, 7)
    logits.square().sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_linear_patch_embedding_is_patchify_then_matmul():
    net = VisionTransformer(**TINY, patch_size=4)
    images = torch.randn(2, 3, 8, 12)
    patches = images.unfold(2, 4, 4).unfold(3, 4, 4)  # [B, C, Hg, Wg, 4, 4]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 3 * 16)
    proj = net.patch_embed.proj
    expected = patches @ proj.weight.reshape(32, -1).T + proj.bias
    torch.testing.assert_close(net.patch_embed(images), expected, rtol=1e-5, atol=1e-5)


def test_sincos_embedding_values():
    emb = sincos_2d((3, 5), 16)
    assert emb.shape == (15, 16)
    # token (row 2, col 3): first quarter is sin(row * omega), third quarter sin(col * omega)
    omega = 1.0 / 10000 ** (torch.arange(4) / 3)
    torch.testing.assert_close(emb[2 * 5 + 3, :4], torch.sin(2 * omega))
    torch.testing.assert_close(emb[2 * 5 + 3, 8:12], torch.sin(3 * omega))


def test_mean_pooling_is_permutation_invariant_without_position():
    torch.manual_seed(0)
    net = VisionTransformer(**TINY, patch_size=4, pos_embed="none", pool="mean").eval()
    tokens = net.patch_embed(torch.randn(2, 3, 8, 12))
    x = tokens
    for block in net.blocks:
        x = block(x)
    perm = torch.randperm(tokens.shape[1])
    y = tokens[:, perm]
    for block in net.blocks:
        y = block(y)
    torch.testing.assert_close(x.mean(1), y.mean(1), rtol=1e-5, atol=1e-5)


def test_drop_path_only_in_training():
    net = VisionTransformer(**TINY, patch_size=4, drop_path_rate=0.5)
    images = torch.randn(4, 3, 8, 12)
    net.eval()
    torch.testing.assert_close(net(images), net(images))
    net.train()
    torch.manual_seed(1)
    a = net(images)
    torch.manual_seed(2)
    assert not torch.allclose(a, net(images))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(patch_size=5), "patch_size 5 does not divide the image height 8"),
        (dict(patch_size=4, num_heads=3), "not divisible by num_heads"),
        (dict(patch_size=4, pos_embed="rope"), "unknown pos_embed 'rope'"),
        (dict(patch_size=4, pool="max"), "unknown pool 'max'"),
        (dict(patch_size=4, patch_embed="pixels"), "unknown patch_embed 'pixels'"),
        (dict(patch_size=3, patch_embed="conv_stem"), "power-of-two patch_size"),
    ],
)
def test_impossible_shapes_and_unknown_options_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        VisionTransformer(**{**TINY, **kwargs})

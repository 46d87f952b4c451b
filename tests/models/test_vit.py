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


def full_logits(net, images):
    """The reference: every token through every block, then the head reads the cls token."""
    return net.forward_head(net.forward_features(images))


def gradients(net, logits, weights):
    """d(weights . logits)/d(parameter), zeros where a parameter got None."""
    net.zero_grad(set_to_none=True)
    (logits * weights).sum().backward()
    return {
        name: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in net.named_parameters()
    }


@pytest.mark.parametrize("rpe", ["none", "exp", "general"])
@pytest.mark.parametrize("attention", ["softmax", "performer", "linear"])
def test_cls_pooling_computes_only_the_cls_token_in_the_last_block_exactly(attention, rpe):
    torch.manual_seed(0)
    net = VisionTransformer(**TINY, patch_size=2, attention=attention, rpe=rpe).double().eval()
    with torch.no_grad():  # masks far from 1 and a cls scalar far from 0, so that they matter
        for name, p in net.named_parameters():
            if ".rpe." in name:
                p.normal_(0, 0.5)
    images = torch.randn(3, 3, 8, 12, dtype=torch.float64)
    weights = torch.randn(3, 7, dtype=torch.float64)
    seen = []
    net.blocks[-1].mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))

    fast = net(images)
    fast_grads = gradients(net, fast, weights)
    full = full_logits(net, images)
    full_grads = gradients(net, full, weights)

    assert seen == [(3, 1, 32), (3, 25, 32)]  # the last MLP saw only the cls token in net(images)
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-10)
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=0, atol=1e-10, msg=name)
    if rpe != "none":  # the last block's mask cannot change the cls token: zero gradient either way
        last = [name for name in full_grads if name.startswith("blocks.1.attn.rpe.")]
        assert last and all(not fast_grads[name].any() for name in last)
        assert all(full_grads[name].abs().max() < 1e-12 for name in last)


def test_cls_only_keeps_the_performer_redraw_schedule_and_mean_pooling_on_all_tokens():
    net = VisionTransformer(**TINY, patch_size=2, attention="performer", rpe="exp")
    net(torch.randn(2, 3, 8, 12))
    assert [block.attn.kernel.steps for block in net.blocks] == [1, 1]  # one kernel call per block
    mean = VisionTransformer(**TINY, patch_size=2, pool="mean").eval()
    seen = []
    mean.blocks[-1].mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    images = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(mean(images), full_logits(mean, images))
    assert seen[0] == (2, 24, 32)
    with pytest.raises(ValueError, match="cls token"):
        mean.forward_features(images, cls_only=True)

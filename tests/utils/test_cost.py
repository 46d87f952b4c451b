"""Cost per image: FLOPs of known layers match a hand count, each RPE implementation is counted by
what it runs, and a run's metrics.json carries the cost keys."""

from __future__ import annotations

import torch
from torch import nn

from vit_rpe.models import VisionTransformer
from vit_rpe.models.attention import MultiHeadSelfAttention, build_kernel
from vit_rpe.models.products import fft_grid_matmul
from vit_rpe.utils.cost import cost_per_image, count_flops, flops_per_image


def test_a_linear_layer_and_a_patch_embedding_are_two_flops_per_multiply_add():
    assert count_flops(nn.Linear(16, 8), torch.zeros(1, 4, 16)) == 2 * 4 * 16 * 8
    conv = nn.Conv2d(3, 5, kernel_size=4, stride=4)  # a 16x16 image cut into 4x4 patches: 16 patches
    assert count_flops(conv, torch.zeros(1, 3, 16, 16)) == 2 * 16 * (3 * 4 * 4) * 5


def test_one_softmax_attention_layer_matches_the_hand_count():
    L, D, H = 10, 24, 3  # tokens, width, heads
    attn = MultiHeadSelfAttention(D, H, kernel=build_kernel("softmax", D // H))
    qkv = 2 * L * D * (3 * D)
    scores_and_values = 2 * (2 * H * L * L * (D // H))  # q k^T, then A v
    proj = 2 * L * D * D
    assert count_flops(attn, torch.zeros(1, L, D)) == qkv + scores_and_values + proj


def test_the_fft_product_counts_its_three_real_transforms():
    """4x4 grid, 2 heads, 3 features: zero-padded to 8x8 (fft_size(7)); rfft2 of z (2*3 signals) and
    of the table (2), irfft2 of the product (2*3), each 2.5 N log2 N with N = 64."""

    class Product(nn.Module):
        def forward(self, z):
            return fft_grid_matmul(torch.zeros(2, 7, 7), z)

    per_signal = 2.5 * 64 * 6
    assert count_flops(Product(), torch.zeros(1, 2, 4, 4, 3)) == int((6 + 2 + 6) * per_signal)


def test_each_rpe_implementation_is_counted_by_what_it_runs():
    def gflops(impl):
        net = VisionTransformer(
            img_size=16, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2,
            attention="performer", rpe="exp", rpe_kwargs={"impl": impl},
        )  # fmt: skip
        return flops_per_image(net, (1, 16, 16))

    counts = {impl: gflops(impl) for impl in ("quadratic", "dense", "kron", "fft")}
    # dense forms M @ Z with Z = phi(k) (x) v: L^2 m e; quadratic L^2 (m + e); kron never forms Z
    assert counts["quadratic"] < counts["kron"] < counts["dense"]
    assert counts["fft"] != counts["dense"]


def test_cost_per_image_has_the_metrics_keys():
    net = VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2
    )
    cost = cost_per_image(net, (1, 8, 8), batch_size=4)
    assert cost["params"] == sum(p.numel() for p in net.parameters())
    assert cost["gflops_per_image"] == flops_per_image(net, (1, 8, 8)) / 1e9 > 0
    assert cost["infer_images_per_sec"] > 0


def test_the_opt_in_c_kernel_is_counted_by_the_arithmetic_of_the_pytorch_path():
    """model.net.attention_kwargs.native_kernel=true runs the same arithmetic in C, which the
    counter cannot see: the count is the PyTorch path's, and the network keeps its opt-in."""
    size = dict(img_size=8, in_chans=1, num_classes=3, patch_size=2, embed_dim=16, depth=1, num_heads=2)
    kwargs = dict(**size, pool="mean", attention="performer", rpe="exp", rpe_kwargs={"impl": "quadratic"})
    native = VisionTransformer(**kwargs, attention_kwargs={"native_kernel": True})
    pytorch = VisionTransformer(**kwargs)
    assert flops_per_image(native, (1, 8, 8)) == flops_per_image(pytorch, (1, 8, 8)) > 0
    assert native.blocks[0].attn.kernel.native_kernel is True

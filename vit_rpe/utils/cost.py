"""Cost per image, the axis efficient-attention papers compare accuracy against: parameters, GFLOPs
of one forward of one image, and inference images per second on the run's device.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the operations a forward
actually dispatches, so every attention kernel and RPE implementation (quadratic, dense, kron,
fft) is counted by what it runs. Conventions (those of FlopCounterMode, fvcore and the papers):
a multiply-add is 2 FLOPs; matmuls, convolutions and attention are counted; elementwise ops,
softmax and norms are not. FFTs, which FlopCounterMode leaves out, are counted here as
2.5 N log2 N per real transform of N points (5 N log2 N complex), the Cooley-Tukey count. The
count runs on a CPU copy of the network with the PyTorch path of every kernel (the opt-in C
kernel, ``native_kernel=true``, does the same arithmetic, invisibly to the counter).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fft_flops(per_point: float):
    def formula(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
        # the transform length is the larger of the input's and the output's (c2r grows a half spectrum)
        points = max(math.prod(x_shape[d] for d in dim), math.prod(out_shape[d] for d in dim))
        batch = math.prod(x_shape) // max(math.prod(x_shape[d] for d in dim), 1)
        return int(per_point * batch * points * math.log2(max(points, 2)))

    return formula


FFT_FLOPS = {
    torch.ops.aten._fft_r2c: _fft_flops(2.5),
    torch.ops.aten._fft_c2r: _fft_flops(2.5),
    torch.ops.aten._fft_c2c: _fft_flops(5.0),
}


def without_native_kernels(net: nn.Module) -> nn.Module:
    """``net`` with every attention on PyTorch's path: the opt-in C kernel
    (``model.net.attention_kwargs.native_kernel``) does the same arithmetic, invisibly to the counter."""
    for module in net.modules():
        if getattr(module, "native_kernel", False):
            module.native_kernel = False
    return net


def count_flops(module: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of ``module(inputs)`` as dispatched (see the module docstring for what counts)."""
    counter = FlopCounterMode(display=False, custom_mapping=FFT_FLOPS)
    with torch.inference_mode(), counter:
        module(inputs)
    return counter.get_total_flops()


def flops_per_image(net: nn.Module, image_shape: Sequence[int]) -> int:
    """FLOPs of one forward of one image [C, H, W], on a CPU copy of ``net`` in eval mode."""
    copied = without_native_kernels(copy.deepcopy(net).cpu().float().eval())
    return count_flops(copied, torch.zeros(1, *image_shape))


def infer_images_per_sec(
    net: nn.Module, image_shape: Sequence[int], batch_size: int = 64, batches: int = 5
) -> float:
    """Inference throughput of ``net`` on its own device: ``batches`` timed batches of random
    images after one warm-up, under ``torch.inference_mode`` (the network's mode is restored)."""
    device = next(net.parameters()).device
    images = torch.randn(batch_size, *image_shape, device=device)
    training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            net(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(batches):
                net(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    finally:
        net.train(training)
    return batches * batch_size / max(seconds, 1e-9)


def cost_per_image(net: nn.Module, image_shape: Sequence[int], batch_size: int = 64) -> dict[str, float]:
    """``params``, ``gflops_per_image`` and ``infer_images_per_sec``: the keys of metrics.json."""
    return {
        "params": count_params(net),
        "gflops_per_image": flops_per_image(net, image_shape) / 1e9,
        "infer_images_per_sec": infer_images_per_sec(net, image_shape, batch_size),
    }

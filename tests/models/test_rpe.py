"""RPE masks: one definition, four products (quadratic, dense, kron, fft) proven equal to a brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_rpe.models import fused as fused_module
from vit_rpe.models.products import fft_size
from vit_rpe.models.rpe import (
    AUTO_FFT_MIN_TOKENS,
    AUTO_KRON_MIN_TOKENS,
    RPES,
    RelativePositionMask,
    build_rpe,
)

GRID = (7, 9)  # non-square on purpose
MASK_FAMILIES = sorted(name for name, cls in RPES.items() if issubclass(cls, RelativePositionMask))
CASES = [(family, distance) for family in MASK_FAMILIES for distance in ("l1", "l2")]


def perturbed(family, distance, prefix, grid=GRID, heads=3, dtype=torch.float64, seed=0, impl="auto"):
    torch.manual_seed(seed)
    rpe = build_rpe(family, grid, heads, prefix, distance, impl).to(dtype)
    with torch.no_grad():
        for p in rpe.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return rpe


def brute_force_mask(rpe) -> torch.Tensor:
    """M[h, i, j] from token coordinates and the family's formula (no offset tables)."""
    hg, wg = rpe.grid_size
    p = rpe.num_prefix_tokens
    y, x = torch.meshgrid(torch.arange(hg), torch.arange(wg), indexing="ij")
    y, x = y.flatten(), x.flatten()
    dy, dx = y[:, None] - y[None, :], x[:, None] - x[None, :]  # [N, N], query minus key
    dist = (dy.abs() + dx.abs()).double() if rpe.distance == "l1" else (dy**2 + dx**2).double().sqrt()
    with torch.no_grad():
        if rpe.family == "general":
            grid = rpe.bias.double()[:, dy + hg - 1, dx + wg - 1].exp()
        elif rpe.family == "exp":
            grid = torch.exp(-F.softplus(rpe.raw_rate.double())[:, None, None] * dist)
        else:
            c = F.softplus(rpe.raw_scale.double())[:, None, None]
            pw = F.softplus(rpe.raw_power.double())[:, None, None]
            grid = (1 + c * dist) ** -pw
        out = torch.empty(rpe.num_heads, p + hg * wg, p + hg * wg, dtype=torch.float64)
        out[:, p:, p:] = grid
        if p:
            s = rpe.cls_logit.double().exp()[:, None]
            out[:, :p, :] = s[:, :, None]
            out[:, :, :p] = s[:, None, :]
    return out


def scalar_mask_entry(rpe, h, i, j) -> float:
    """One entry of M, written out for a single pair of tokens."""
    hg, wg = rpe.grid_size
    p = rpe.num_prefix_tokens
    if i < p or j < p:
        return math.exp(rpe.cls_logit[h].item())
    (yi, xi), (yj, xj) = divmod(i - p, wg), divmod(j - p, wg)
    dy, dx = yi - yj, xi - xj
    dist = abs(dy) + abs(dx) if rpe.distance == "l1" else math.hypot(dy, dx)
    if rpe.family == "general":
        return math.exp(rpe.bias[h, dy + hg - 1, dx + wg - 1].item())
    if rpe.family == "exp":
        return math.exp(-F.softplus(rpe.raw_rate[h]).item() * dist)
    c, pw = F.softplus(rpe.raw_scale[h]).item(), F.softplus(rpe.raw_power[h]).item()
    return (1 + c * dist) ** -pw


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("family,distance", CASES)
def test_mask_matches_brute_force(family, distance, prefix):
    rpe = perturbed(family, distance, prefix)
    mask = rpe.mask().detach()
    torch.testing.assert_close(mask, brute_force_mask(rpe), rtol=1e-12, atol=1e-12)
    for h, i, j in [(0, 0, 0), (1, 0, 5), (2, 5, 0), (0, 7, 40), (1, 62, 3), (2, 30, 31)]:
        i, j = min(i, rpe.num_tokens - 1), min(j, rpe.num_tokens - 1)
        assert mask[h, i, j].item() == pytest.approx(scalar_mask_entry(rpe, h, i, j), rel=1e-12)


def impls_of(rpe):
    return ["dense", "fft"] + (["kron"] if rpe.separable else [])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("family,distance", CASES)
def test_every_impl_equals_dense_matmul(family, distance, prefix, dtype, tol):
    rpe = perturbed(family, distance, prefix, dtype=dtype)
    z = torch.randn(2, 3, rpe.num_tokens, 5, dtype=dtype)
    reference = torch.matmul(brute_force_mask(rpe).to(dtype), z)
    scale = reference.abs().max()
    for impl in impls_of(rpe):
        out = rpe.matmul(z, impl)
        assert out.dtype == dtype
        err = ((out - reference).abs().max() / scale).item()
        assert err < tol, (impl, err)


def test_kron_needs_a_separable_mask():
    assert build_rpe("exp", GRID, 2, distance="l1", impl="kron").separable
    for family, distance in [("exp", "l2"), ("poly", "l1"), ("general", "l1")]:
        with pytest.raises(ValueError, match="auto, quadratic, fft or dense"):
            build_rpe(family, GRID, 2, distance=distance, impl="kron")


def test_bad_names_are_rejected():
    assert build_rpe("none", GRID, 2) is None
    with pytest.raises(ValueError, match="general"):
        build_rpe("gaussian", GRID, 2)
    with pytest.raises(ValueError, match="l1"):
        build_rpe("exp", GRID, 2, distance="linf")
    with pytest.raises(ValueError, match="auto"):
        build_rpe("exp", GRID, 2, impl="sparse")
    with pytest.raises(ValueError, match="init_rate"):
        build_rpe("exp", GRID, 2, init_ratee=0.1)


def test_auto_rule():
    kron = math.ceil(AUTO_KRON_MIN_TOKENS**0.5)
    fft = math.ceil(AUTO_FFT_MIN_TOKENS**0.5)
    assert build_rpe("exp", (kron - 1, kron - 1), 2).impl == "quadratic"
    assert build_rpe("exp", (kron, kron), 2).impl == "kron"
    assert build_rpe("exp", (fft, fft), 2).impl == "kron"
    for family, distance in [("exp", "l2"), ("poly", "l1"), ("general", "l1")]:
        assert build_rpe(family, (kron, kron), 2, distance=distance).impl == "quadratic"
        assert build_rpe(family, (fft - 1, fft - 1), 2, distance=distance).impl == "quadratic"
        assert build_rpe(family, (fft, fft), 2, distance=distance).impl == "fft"


@pytest.mark.parametrize("family,distance", CASES)
def test_masks_start_near_one_and_stay_positive(family, distance):
    fresh = build_rpe(family, (8, 8), 4, 1, distance)
    m = fresh.mask()
    assert m.min() > 0.8 and m.max() <= 1.0 + 1e-6
    for seed in range(3):
        rpe = perturbed(family, distance, 1, grid=(8, 8), heads=4, dtype=torch.float32, seed=seed)
        with torch.no_grad():
            for p in rpe.parameters():
                p.add_(3 * torch.randn_like(p))
        assert (rpe.mask() > 0).all()
        assert (rpe.mask_offsets() > 0).all()
        z = torch.rand(1, 4, rpe.num_tokens, 3)  # positive features -> positive denominators
        for impl in impls_of(rpe):
            assert (rpe.matmul(z, impl) > 0).all(), impl


class Matmul(nn.Module):
    """z -> rpe.matmul(z, impl) as a module, so that functional_call can swap the mask's parameters."""

    def __init__(self, rpe, impl):
        super().__init__()
        self.rpe, self.impl = rpe, impl

    def forward(self, z):
        return self.rpe.matmul(z, self.impl)


def gradcheck_matmul(rpe, impl, z) -> bool:
    """gradcheck of M @ z in z and in every parameter of the mask."""
    product = Matmul(rpe, impl)
    names = [n for n, _ in product.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for _, p in product.named_parameters()]
    return torch.autograd.gradcheck(
        lambda z, *v: torch.func.functional_call(product, dict(zip(names, v)), (z,)), (z, *values)
    )


@pytest.mark.parametrize("impl", ["kron", "fft"])
@pytest.mark.parametrize("prefix", [0, 1])
def test_gradcheck_through_products_and_mask_parameters(impl, prefix):
    family = "exp" if impl == "kron" else "poly"
    rpe = perturbed(family, "l1", prefix, grid=(3, 4) if impl == "kron" else (2, 3), heads=2)
    z = torch.randn(1, 2, rpe.num_tokens, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck_matmul(rpe, impl, z)


def test_gradcheck_general_fft():
    rpe = perturbed("general", "l2", 1, grid=(2, 3), heads=1)
    z = torch.randn(1, 1, rpe.num_tokens, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck_matmul(rpe, "fft", z)


def test_fft_size_is_smooth_and_large_enough():
    for n in range(1, 300):
        s = fft_size(n)
        assert s >= n and s < 2 * n + 2
        m = s
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1


def brute_force_masked_kernel_matmul(rpe, fq, fk, v1):
    """sum_j M_ij (fq_i . fk_j) v1_j with the L x L mask written out."""
    return ((fq @ fk.transpose(-2, -1)) * brute_force_mask(rpe).to(fq.dtype)) @ v1


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize(
    "grid,tile", [((7, 9), 8), ((7, 9), 2), ((7, 9), 3), ((5, 4), 1), ((2, 11), 4), ((8, 8), 4)]
)
def test_tiled_kron_equals_brute_force(grid, tile, prefix, dtype, tol):
    """Tiles that divide the grid or not (zero padding), one tile row or column, 1-token tiles:
    every kind of key (same tile, same tile row, same tile column, elsewhere) is reached."""
    rpe = perturbed("exp", "l1", prefix, grid=grid, dtype=dtype, impl="kron")
    rpe.kron_tile = tile
    g = torch.Generator().manual_seed(0)
    fq, fk = (torch.rand(2, 3, rpe.num_tokens, 6, generator=g, dtype=dtype) for _ in range(2))
    v1 = torch.randn(2, 3, rpe.num_tokens, 5, generator=g, dtype=dtype)
    expected = brute_force_masked_kernel_matmul(rpe, fq.double(), fk.double(), v1.double())
    err = (rpe.masked_kernel_matmul(fq, fk, v1).double() - expected).abs().max() / expected.abs().max()
    assert err.item() < tol


@pytest.mark.parametrize("impl", ["kron", "quadratic"])
@pytest.mark.parametrize("prefix", [0, 1])
def test_masked_kernel_matmul_gradients_equal_dense(prefix, impl, monkeypatch):
    """Gradients of fq, fk, v1 and of the mask parameters (the rate, the cls logit); quadratic
    one batch element at a time."""
    monkeypatch.setattr(fused_module, "SCORES_CHUNK", 1)
    rpe = perturbed("exp", "l1", prefix, grid=(5, 7), heads=2, impl="kron")
    rpe.kron_tile = 2
    g = torch.Generator().manual_seed(1)
    inputs = [torch.rand(3, 2, rpe.num_tokens, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    grads = {}
    for name in (impl, "dense"):
        rpe.impl = name
        rpe.zero_grad(set_to_none=True)
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        (rpe.masked_kernel_matmul(*leaves) * torch.linspace(-1, 1, 3, dtype=torch.float64)).sum().backward()
        grads[name] = [x.grad for x in leaves] + [p.grad for p in rpe.parameters()]
    assert len(grads[impl]) == 3 + 1 + prefix
    for got, dense in zip(grads[impl], grads["dense"]):
        torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-12)

"""Relative position encodings: positive multiplicative masks over the patch grid.

A mask M [heads, L, L] reweights attention, out_i = sum_j M_ij A_ij v_j / sum_j M_ij A_ij
(Choromanski et al., 2021, arXiv:2107.07999). On the Hg x Wg grid M depends only on the offset
between query and key, so each family defines one table: ``log_mask_offsets()`` [H, 2Hg-1, 2Wg-1],
indexed by (dy + Hg - 1, dx + Wg - 1) with dy = y_query - y_key. Everything else derives from it:

- ``mask()``: the dense [H, L, L] matrix, prefix (cls) rows and columns filled with a learned
  positive scalar per head;
- ``log_mask()``: its logarithm, the additive bias of softmax attention;
- ``matmul(z)``: the product M @ z, computed ``dense`` (an L x L matmul, the reference), ``kron``
  (M = My (x) Mx for separable masks: one small matmul per grid axis) or ``fft`` (a 2-D linear
  convolution of the grid with the offset table); products.py;
- ``masked_kernel_matmul(fq, fk, v1)``: what linear attention needs of M,
  sum_j M_ij (fq_i . fk_j) v1_j, i.e. (M * fq fk^T) v1, which is phi(q_i).(M Z)_i. dense and fft
  contract ``matmul(Z)``; kron never builds Z (the tiled algorithm, kron.py); ``quadratic`` masks
  the L x L kernel matrix fq fk^T (fused.py), which is quadratic attention (L^2 (m + e)
  multiply-adds against dense's L^2 m e) and the fastest on small grids.

Masks are exp(something real), so they are positive by construction. The other kind of family,
rotary (rope.py: q and k rotated before the kernel), shares the registry ``RPES`` and ``build_rpe``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table_simple
from torch import nn

from vit_rpe.models.fused import MaskedKernelMatrix
from vit_rpe.models.kron import KRON_TILE, tiled_exp_attend
from vit_rpe.models.products import fft_grid_matmul, kron_grid_matmul
from vit_rpe.models.rope import RoPE2d, RotaryPositionEmbedding
from vit_rpe.utils.errors import ConfigError
from vit_rpe.utils.registry import Registry

DISTANCES = ("l1", "l2")
IMPLS = ("auto", "quadratic", "dense", "kron", "fft")

# The `auto` rule, measured by `python -m vit_rpe.bench attention` (docs/benchmarks.md): small grids
# get quadratic attention; separable masks switch to kron at AUTO_KRON_MIN_TOKENS grid tokens
# (quadratic is faster at 16x16, kron at 24x24, a tie for Performer at 20x20), the others to fft at
# AUTO_FFT_MIN_TOKENS (quadratic is faster at 56x56, fft at 64x64).
AUTO_KRON_MIN_TOKENS = 400
AUTO_FFT_MIN_TOKENS = 3600


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def offsets(n: int) -> torch.Tensor:
    """The 2n-1 signed offsets -(n-1) .. n-1 along one axis, as floats."""
    return torch.arange(-(n - 1), n, dtype=torch.float64)


def offset_distance_int(grid_size: tuple[int, int], distance: str) -> torch.Tensor:
    """|dy| + |dx| (l1) or dy^2 + dx^2 (l2) of every 2-D offset, [2Hg-1, 2Wg-1], as exact integers."""
    dy = torch.arange(-(grid_size[0] - 1), grid_size[0])[:, None]
    dx = torch.arange(-(grid_size[1] - 1), grid_size[1])[None, :]
    if distance == "l1":
        return dy.abs() + dx.abs()
    return dy**2 + dx**2


def toeplitz_index(n: int) -> torch.Tensor:
    """[n, n] index into a (2n-1)-long offset vector: entry (i, j) -> i - j + n - 1."""
    i = torch.arange(n)
    return i[:, None] - i[None, :] + n - 1


def grid_index(grid_size: tuple[int, int]) -> torch.Tensor:
    """[N, N] index into a flattened [2Hg-1, 2Wg-1] offset table for row-major grid tokens."""
    hg, wg = grid_size
    iy, ix = toeplitz_index(hg), toeplitz_index(wg)
    return (iy[:, None, :, None] * (2 * wg - 1) + ix[None, :, None, :]).reshape(hg * wg, hg * wg)


class RelativePositionMask(nn.Module):
    """Base class: a per-head positive mask over a grid plus ``num_prefix_tokens`` cls tokens.

    Subclasses define ``log_mask_offsets()``; separable ones also ``log_axis_offsets()``. Built as
    ``cls(grid_size, num_heads, num_prefix_tokens, distance=..., impl=..., **init)``.
    """

    family = ""

    def __init__(
        self,
        grid_size: tuple[int, int],
        num_heads: int,
        num_prefix_tokens: int = 0,
        distance: str = "l1",
        impl: str = "auto",
    ):
        super().__init__()
        if distance not in DISTANCES:
            raise ConfigError(
                f"unknown model.net.rpe_kwargs.distance {distance!r}: choose one of {list(DISTANCES)}"
            )
        if impl not in IMPLS:
            raise ConfigError(f"unknown model.net.rpe_kwargs.impl {impl!r}: choose one of {list(IMPLS)}")
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_heads = num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.distance = distance
        self.separable = self.is_separable(distance)
        if impl == "kron" and not self.separable:
            raise ConfigError(
                f"model.net.rpe_kwargs.impl=kron needs a separable mask (rpe=exp with distance l1), "
                f"but this is {self.describe()}: use impl auto, quadratic, fft or dense"
            )
        self.requested_impl = impl  # `auto` is resolved again at every grid size (set_grid_size)
        self.impl = self.resolve_impl(impl)
        # The cls token has no grid position: its row and column get exp(cls_logit[h]).
        self.cls_logit = nn.Parameter(torch.zeros(num_heads)) if num_prefix_tokens else None
        self.register_grid_buffers(torch.device("cpu"))

    def register_grid_buffers(self, device: torch.device) -> None:
        """The index and distance tables of ``self.grid_size`` (not saved: they follow from it)."""
        hg, wg = self.grid_size
        self.register_buffer("index", grid_index(self.grid_size).to(device), persistent=False)
        self.register_buffer("y_index", toeplitz_index(hg).to(device), persistent=False)
        self.register_buffer("x_index", toeplitz_index(wg).to(device), persistent=False)
        # Integer buffers: .double() / .half() leave them exact; converted to the parameters' dtype on use.
        distance_int = offset_distance_int(self.grid_size, self.distance).to(device)  # [2Hg-1, 2Wg-1]
        self.register_buffer("distance_int", distance_int, persistent=False)
        self.register_buffer("grid_distance_int", distance_int.flatten()[self.index], persistent=False)

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        """Work on another patch grid (another image size, same patch size): the index and distance
        tables follow the grid, ``impl=auto`` is chosen again for its size, and the learned values
        carry over (exp, poly: the same function of distance; cls_logit unchanged; general:
        its offset table resampled, see ``GeneralRPE.resample``)."""
        grid_size = (int(grid_size[0]), int(grid_size[1]))
        if grid_size == self.grid_size:
            return
        self.grid_size = grid_size
        self.impl = self.resolve_impl(self.requested_impl)
        self.register_grid_buffers(self.index.device)

    @classmethod
    def is_separable(cls, distance: str) -> bool:
        """Whether the grid mask factors as My (x) Mx, so that impl=kron applies."""
        return False

    def describe(self) -> str:
        return f"rpe={type(self).family} with model.net.rpe_kwargs.distance={self.distance}"

    def extra_repr(self) -> str:
        return (
            f"grid_size={self.grid_size}, heads={self.num_heads}, distance={self.distance}, impl={self.impl}"
        )

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]

    def resolve_impl(self, impl: str) -> str:
        """``auto``: quadratic for small grids, then kron if separable, else fft (docs/attention.md)."""
        if impl != "auto":
            return impl
        n = self.grid_size[0] * self.grid_size[1]
        if self.separable:
            return "kron" if n >= AUTO_KRON_MIN_TOKENS else "quadratic"
        return "fft" if n >= AUTO_FFT_MIN_TOKENS else "quadratic"

    # --- the one definition ---------------------------------------------------------------------
    def log_mask_offsets(self) -> torch.Tensor:
        """log M for every 2-D offset, [H, 2Hg-1, 2Wg-1]."""
        raise NotImplementedError

    def mask_offsets(self) -> torch.Tensor:
        return self.log_mask_offsets().exp()

    # --- derived views --------------------------------------------------------------------------
    def log_mask_grid(self) -> torch.Tensor:
        """log M between grid tokens, [H, N, N]: the offset table read at every pair's offset."""
        return self.log_mask_offsets().flatten(1)[:, self.index]

    def log_mask(self) -> torch.Tensor:
        """log M as a dense [H, L, L] matrix (prefix tokens first)."""
        grid = self.log_mask_grid()  # [H, N, N]
        p = self.num_prefix_tokens
        if not p:
            return grid
        cls = self.cls_logit[:, None, None].to(grid.dtype)
        out = F.pad(grid, (p, 0, p, 0))  # [H, L, L], zeros in the prefix rows and columns
        border = torch.ones_like(out, dtype=torch.bool)
        border[:, p:, p:] = False
        return torch.where(border, cls.expand_as(out), out)

    def mask(self) -> torch.Tensor:
        """The positive multiplicative mask M [H, L, L] this module applies."""
        return self.log_mask().exp()

    # --- M @ z ----------------------------------------------------------------------------------
    def matmul(self, z: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        """M @ z for z [B, H, L, F] (any F), by the module's ``impl`` or the one given."""
        impl = impl or self.impl
        if impl in ("dense", "quadratic"):  # no product with z is cheaper than the L x L one
            return torch.matmul(self.mask().to(z.dtype), z)
        if impl == "kron" and not self.separable:
            raise ConfigError(f"impl=kron needs a separable mask, not {self.describe()}: use fft or dense")
        p = self.num_prefix_tokens
        zp, zg = z[:, :, :p], z[:, :, p:]
        hg, wg = self.grid_size
        zg = zg.reshape(*z.shape[:2], hg, wg, z.shape[-1])  # [B, H, Hg, Wg, F]
        if impl == "kron":
            ly, lx = self.log_axis_offsets()  # [H, 2Hg-1], [H, 2Wg-1]
            my = ly.exp()[:, self.y_index].to(z.dtype)  # [H, Hg, Hg]
            mx = lx.exp()[:, self.x_index].to(z.dtype)  # [H, Wg, Wg]
            out = kron_grid_matmul(my, mx, zg)
        else:
            out = fft_grid_matmul(self.mask_offsets(), zg)
        out = out.flatten(2, 3)  # [B, H, N, F]
        if not p:
            return out
        # Prefix rows and columns of M are all exp(cls_logit): rank-one corrections.
        s = self.cls_logit.exp().to(z.dtype)[None, :, None, None]  # [1, H, 1, 1]
        zp_sum = zp.sum(2, keepdim=True)  # [B, H, 1, F]
        prefix_rows = s * (zp_sum + zg.sum((2, 3))[:, :, None])  # [B, H, 1, F]
        return torch.cat([prefix_rows.expand(-1, -1, p, -1), out + s * zp_sum], dim=2)

    def masked_kernel_matmul(self, fq: torch.Tensor, fk: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """(M * fq fk^T) v1, i.e. out_i = sum_j M_ij (fq_i . fk_j) v1_j: [B, H, L, e].

        The same numbers as contracting ``matmul(Z)`` (Z_j = fk_j (x) v1_j) with fq, arranged so
        that kron and fft never slice or concatenate the big [L, m*e] tensors: the prefix (cls)
        rows and column are contracted with fq first, which makes them [L, e]-sized terms.
        """
        b, h, n, m = fk.shape
        e = v1.shape[-1]
        p = self.num_prefix_tokens
        if self.impl == "quadratic":  # the kernel matrix fq fk^T, masked, times v1
            return MaskedKernelMatrix.apply(fq, fk, v1, self.mask().to(fq.dtype))
        if self.impl == "dense":
            z = (fk[..., :, None] * v1[..., None, :]).reshape(b, h, n, m * e)
            return torch.einsum("bhlm,bhlme->bhle", fq, self.matmul(z).reshape(b, h, n, m, e))
        fq_g = fq[:, :, p:]
        if self.impl == "kron":
            out = self._tiled_grid_product(fq_g, fk[:, :, p:], v1[:, :, p:])
        else:
            hg, wg = self.grid_size
            zg = fk[:, :, p:, :, None] * v1[:, :, p:, None, :]  # [B, H, N, m, e]
            dg = fft_grid_matmul(self.mask_offsets(), zg.reshape(b, h, hg, wg, m * e))
            out = torch.einsum("bhnm,bhnme->bhne", fq_g, dg.reshape(b, h, n - p, m, e))  # [B, H, N, e]
        if not p:
            return out
        # Prefix rows and columns of M are all s = exp(cls_logit): rank-one terms.
        s = self.cls_logit.exp().to(fq.dtype)[None, :, None, None]  # [1, H, 1, 1]
        zp_sum = torch.einsum("bhpm,bhpe->bhme", fk[:, :, :p], v1[:, :, :p])  # [B, H, m, e]
        out = out + s * (fq_g @ zp_sum)  # grid rows see the prefix keys
        total = zp_sum + torch.einsum("bhnm,bhne->bhme", fk[:, :, p:], v1[:, :, p:])
        return torch.cat([s * (fq[:, :, :p] @ total), out], dim=2)  # [B, H, L, e]

    def log_axis_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Separable masks: log My and log Mx per offset, [H, 2Hg-1] and [H, 2Wg-1]."""
        raise NotImplementedError

    def _tiled_grid_product(self, fq: torch.Tensor, fk: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """``masked_kernel_matmul`` over the grid tokens alone for impl=kron: [B, H, N, e]."""
        raise NotImplementedError


RPES = Registry("rpe", "model.net.rpe", (RelativePositionMask, RotaryPositionEmbedding))
register_rpe = RPES.register
register_rpe("rope")(RoPE2d)


@register_rpe("general")
class GeneralRPE(RelativePositionMask):
    """One learned logit per head and 2-D offset: M = exp(b[h, dy, dx]); init b = 0 (M = 1)."""

    family = "general"

    def __init__(
        self,
        grid_size,
        num_heads,
        num_prefix_tokens=0,
        distance="l1",
        impl="auto",
        init_std=0.0,
    ):
        super().__init__(grid_size, num_heads, num_prefix_tokens, distance, impl)
        hg, wg = self.grid_size
        self.bias = nn.Parameter(torch.randn(num_heads, 2 * hg - 1, 2 * wg - 1) * init_std)

    def log_mask_offsets(self) -> torch.Tensor:
        return self.bias

    @staticmethod
    def resample(bias: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """The offset table [H, 2h-1, 2w-1] of another grid, for ``grid_size``: [H, 2Hg-1, 2Wg-1].

        Bicubic interpolation of the table as an image (timm's ``resize_rel_pos_bias_table_simple``,
        as for Swin/MaxViT tables): offsets are scaled with the grid, so a table learned on 7x7
        patches reads at 9x9 as if the same picture were cut into finer patches.
        """
        shape = (bias.shape[0], 2 * grid_size[0] - 1, 2 * grid_size[1] - 1)
        if tuple(bias.shape) == shape:
            return bias
        return resize_rel_pos_bias_table_simple(bias.float(), grid_size, shape).to(bias.dtype)

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        super().set_grid_size(grid_size)
        with torch.no_grad():
            table = self.resample(self.bias.detach(), self.grid_size)
            self.bias = nn.Parameter(table, requires_grad=self.bias.requires_grad)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A table saved at another grid loads resampled to this one."""
        key = prefix + "bias"
        if key in state_dict and state_dict[key].shape != self.bias.shape:
            state_dict[key] = self.resample(state_dict[key], self.grid_size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DistanceMask(RelativePositionMask):
    """A mask that depends on the distance between tokens alone (exp, poly): one formula,
    ``log_mask_at(distance)``, read on the offset table or straight on the [N, N] token distances
    (which spares the dense mask a gather and its backward a scatter)."""

    def log_mask_at(self, distance_int: torch.Tensor) -> torch.Tensor:
        """log M [H, ...] at the integer distances ``distance_int`` [...] (l2: squared)."""
        raise NotImplementedError

    def log_mask_offsets(self) -> torch.Tensor:
        return self.log_mask_at(self.distance_int)

    def log_mask_grid(self) -> torch.Tensor:
        return self.log_mask_at(self.grid_distance_int)

    def as_distance(self, distance_int: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The distances (l1, or l2 from squared integers) in the dtype of ``like``."""
        d = distance_int.to(like.dtype)
        return d if self.distance == "l1" else d.sqrt()


@register_rpe("exp")
class ExpRPE(DistanceMask):
    """M = exp(-a_h * dist), a_h = softplus(raw_h). Separable (My (x) Mx) for the l1 distance."""

    family = "exp"

    def __init__(
        self,
        grid_size,
        num_heads,
        num_prefix_tokens=0,
        distance="l1",
        impl="auto",
        init_rate=0.01,
    ):
        super().__init__(grid_size, num_heads, num_prefix_tokens, distance, impl)
        self.raw_rate = nn.Parameter(torch.full((num_heads,), inverse_softplus(init_rate)))
        self.kron_tile = KRON_TILE  # a plain attribute: tests shrink it to reach every kind of tile

    @classmethod
    def is_separable(cls, distance: str) -> bool:
        return distance == "l1"

    def rate(self) -> torch.Tensor:
        return F.softplus(self.raw_rate)

    def log_mask_at(self, distance_int):
        a = self.rate().view(-1, *[1] * distance_int.ndim)
        return -a * self.as_distance(distance_int, a)

    def _tiled_grid_product(self, fq, fk, v1):
        return tiled_exp_attend(fq, fk, v1, self.rate().to(fq.dtype), self.grid_size, self.kron_tile)

    def log_axis_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """l1: exp(-a(|dy| + |dx|)) = exp(-a|dy|) exp(-a|dx|)."""
        a = self.rate()[:, None]
        dy = offsets(self.grid_size[0]).abs().to(a)
        dx = offsets(self.grid_size[1]).abs().to(a)
        return -a * dy, -a * dx


@register_rpe("poly")
class PolyRPE(DistanceMask):
    """M = (1 + c_h * dist)^(-p_h), c_h, p_h = softplus(.)."""

    family = "poly"

    def __init__(
        self,
        grid_size,
        num_heads,
        num_prefix_tokens=0,
        distance="l1",
        impl="auto",
        init_scale=0.01,
        init_power=1.0,
    ):
        super().__init__(grid_size, num_heads, num_prefix_tokens, distance, impl)
        self.raw_scale = nn.Parameter(torch.full((num_heads,), inverse_softplus(init_scale)))
        self.raw_power = nn.Parameter(torch.full((num_heads,), inverse_softplus(init_power)))

    def log_mask_at(self, distance_int):
        shape = (-1, *[1] * distance_int.ndim)
        c, p = F.softplus(self.raw_scale).view(shape), F.softplus(self.raw_power).view(shape)
        return -p * torch.log1p(c * self.as_distance(distance_int, c))


def build_rpe(
    family: str | None,
    grid_size: tuple[int, int],
    num_heads: int,
    num_prefix_tokens: int = 0,
    distance: str | None = None,
    impl: str | None = None,
    init: Mapping[str, Any] | None = None,
    head_dim: int | None = None,
    **kwargs,
) -> nn.Module | None:
    """The RPE module for one attention layer, or None for ``family="none"``.

    ``family``: a registered name or an import path (``package.module:Class``). ``init`` (the
    ``model.net.rpe_kwargs.init`` config block) and ``kwargs`` are the family's own options
    (general: init_std; exp: init_rate; poly: init_scale, init_power; rope: variant, theta); None
    values are dropped, so a family's defaults apply. Masks also take ``distance`` and ``impl``;
    rotary families take ``head_dim`` instead.
    """
    if family in (None, "none"):
        return None
    cls = RPES.resolve(family)
    kwargs = {**(init or {}), **kwargs, "distance": distance, "impl": impl}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if issubclass(cls, RotaryPositionEmbedding):
        if head_dim is None:
            raise ValueError(f"rpe={family} rotates queries and keys: build_rpe needs their head_dim")
        kwargs["head_dim"] = head_dim
    try:
        return cls(grid_size, num_heads, num_prefix_tokens=num_prefix_tokens, **kwargs)
    except TypeError as err:
        raise ConfigError(f"bad option for rpe={family}: {err}") from None

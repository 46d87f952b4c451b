"""Relative position encodings: positive multiplicative masks over the patch grid.

A mask M [heads, L, L] reweights attention, out_i = sum_j M_ij A_ij v_j / sum_j M_ij A_ij
(Choromanski et al., 2021, arXiv:2107.07999). On the Hg x Wg grid M depends only on the offset
between query and key, so each family defines one table: ``log_mask_offsets()`` [H, 2Hg-1, 2Wg-1],
indexed by (dy + Hg - 1, dx + Wg - 1) with dy = y_query - y_key. Everything else derives from it:

- ``mask()``: the dense [H, L, L] matrix, prefix (cls) rows and columns filled with a learned
  positive scalar per head;
- ``log_mask()``: its logarithm, the additive bias of softmax attention;
- ``forward(z)``: the product M @ z, computed ``dense`` (an L x L matmul, the reference), ``kron``
  (M = My (x) Mx for separable masks: one small matmul per grid axis) or ``fft`` (a 2-D linear
  convolution of the grid with the offset table);
- ``attend(fq, fk, v1)``: what linear attention needs of M, sum_j M_ij (fq_i . fk_j) v1_j, which is
  phi(q_i).(M Z)_i. dense and fft contract ``forward(Z)``; kron never builds Z
  (``tiled_exp_attend``); ``quadratic`` masks the L x L kernel matrix fq fk^T instead, which is
  quadratic attention (L^2 (m + e) multiply-adds against dense's L^2 m e) and the fastest on
  small grids.

Masks are exp(something real), so they are positive by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from vit_rpe.models.attention import batch_chunks
from vit_rpe.utils.errors import ConfigError

FAMILIES = ("none", "general", "exp", "poly")
DISTANCES = ("l1", "l2")
IMPLS = ("auto", "quadratic", "dense", "kron", "fft")

# The `auto` rule, measured by `python -m vit_rpe.bench attention` (docs/benchmarks.md): small grids
# get quadratic attention; separable masks switch to kron at AUTO_KRON_MIN_TOKENS grid tokens
# (quadratic is faster at 16x16, kron at 24x24, a tie for Performer at 20x20), the others to fft at
# AUTO_FFT_MIN_TOKENS (quadratic is faster at 56x56, fft at 64x64).
AUTO_KRON_MIN_TOKENS = 400
AUTO_FFT_MIN_TOKENS = 3600
# Side of the square tiles of the kron attention (tiled_exp_attend); measured in docs/benchmarks.md.
KRON_TILE = 8


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


def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: a size pocketfft and cuFFT handle fast."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


class RelativePositionMask(nn.Module):
    """Base class: a per-head positive mask over a grid plus ``num_prefix_tokens`` cls tokens.

    Subclasses define ``log_mask_offsets()``; separable ones also ``log_axis_offsets()``.
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
            raise ConfigError(f"unknown rpe.distance {distance!r}: choose one of {list(DISTANCES)}")
        if impl not in IMPLS:
            raise ConfigError(f"unknown rpe.impl {impl!r}: choose one of {list(IMPLS)}")
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_heads = num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.distance = distance
        self.separable = self.is_separable(distance)
        if impl == "kron" and not self.separable:
            raise ConfigError(
                f"rpe.impl=kron needs a separable mask (rpe=exp with rpe.distance=l1), "
                f"but this is {self.describe()}: use rpe.impl=auto, quadratic, fft or dense"
            )
        self.impl = self.resolve_impl(impl)
        # The cls token has no grid position: its row and column get exp(cls_logit[h]).
        self.cls_logit = nn.Parameter(torch.zeros(num_heads)) if num_prefix_tokens else None
        hg, wg = self.grid_size
        self.register_buffer("index", grid_index(self.grid_size), persistent=False)
        self.register_buffer("y_index", toeplitz_index(hg), persistent=False)
        self.register_buffer("x_index", toeplitz_index(wg), persistent=False)
        # Integer buffer: .double() / .half() leave it exact; converted to the parameters' dtype on use.
        self.register_buffer("distance_int", offset_distance_int(self.grid_size, distance), persistent=False)

    @classmethod
    def is_separable(cls, distance: str) -> bool:
        """Whether the grid mask factors as My (x) Mx, so that impl=kron applies."""
        return False

    def describe(self) -> str:
        return f"rpe={type(self).family} with rpe.distance={self.distance}"

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

    def distances(self, like: torch.Tensor) -> torch.Tensor:
        """Distance of every 2-D offset, [2Hg-1, 2Wg-1], in the dtype of ``like``."""
        d = self.distance_int.to(like.dtype)
        return d if self.distance == "l1" else d.sqrt()

    # --- the one definition ---------------------------------------------------------------------
    def log_mask_offsets(self) -> torch.Tensor:
        """log M for every 2-D offset, [H, 2Hg-1, 2Wg-1]."""
        raise NotImplementedError

    def mask_offsets(self) -> torch.Tensor:
        return self.log_mask_offsets().exp()

    # --- derived views --------------------------------------------------------------------------
    def log_mask(self) -> torch.Tensor:
        """log M as a dense [H, L, L] matrix (prefix tokens first)."""
        grid = self.log_mask_offsets().flatten(1)[:, self.index]  # [H, N, N]
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
    def forward(self, z: torch.Tensor, impl: str | None = None) -> torch.Tensor:
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
        out = self._kron(zg) if impl == "kron" else self._fft(zg)
        out = out.flatten(2, 3)  # [B, H, N, F]
        if not p:
            return out
        # Prefix rows and columns of M are all exp(cls_logit): rank-one corrections.
        s = self.cls_logit.exp().to(z.dtype)[None, :, None, None]  # [1, H, 1, 1]
        zp_sum = zp.sum(2, keepdim=True)  # [B, H, 1, F]
        prefix_rows = s * (zp_sum + zg.sum((2, 3))[:, :, None])  # [B, H, 1, F]
        return torch.cat([prefix_rows.expand(-1, -1, p, -1), out + s * zp_sum], dim=2)

    def attend(self, fq: torch.Tensor, fk: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """out_i = sum_m fq[i, m] (M Z)[i, m, :] with Z_j = fk_j (x) v1_j: [B, H, L, e].

        The same numbers as contracting ``self(z)``, arranged so that kron and fft never slice or
        concatenate the big [L, m*e] tensors: the prefix (cls) rows and column are contracted
        with phi(q) first, which makes them [L, e]-sized terms.
        """
        b, h, n, m = fk.shape
        e = v1.shape[-1]
        p = self.num_prefix_tokens
        if self.impl == "quadratic":  # (M * fq fk^T) v1: the same sums in the other order
            return MaskedKernelMatrix.apply(fq, fk, v1, self.mask().to(fq.dtype))
        if self.impl == "dense":
            z = (fk[..., :, None] * v1[..., None, :]).reshape(b, h, n, m * e)
            return torch.einsum("bhlm,bhlme->bhle", fq, self(z).reshape(b, h, n, m, e))
        fq_g = fq[:, :, p:]
        if self.impl == "kron":
            out = self._kron_attend(fq_g, fk[:, :, p:], v1[:, :, p:])
        else:
            hg, wg = self.grid_size
            zg = fk[:, :, p:, :, None] * v1[:, :, p:, None, :]  # [B, H, N, m, e]
            dg = self._fft(zg.reshape(b, h, hg, wg, m * e)).reshape(b, h, n - p, m, e)
            out = torch.einsum("bhnm,bhnme->bhne", fq_g, dg)  # [B, H, N, e]
        if not p:
            return out
        # Prefix rows and columns of M are all s = exp(cls_logit): rank-one terms.
        s = self.cls_logit.exp().to(fq.dtype)[None, :, None, None]  # [1, H, 1, 1]
        zp_sum = torch.einsum("bhpm,bhpe->bhme", fk[:, :, :p], v1[:, :, :p])  # [B, H, m, e]
        out = out + s * (fq_g @ zp_sum)  # grid rows see the prefix keys
        total = zp_sum + torch.einsum("bhnm,bhne->bhme", fk[:, :, p:], v1[:, :, p:])
        return torch.cat([s * (fq[:, :, :p] @ total), out], dim=2)  # [B, H, L, e]

    def _kron(self, zg: torch.Tensor) -> torch.Tensor:
        """M_grid = My (x) Mx: one matmul along the grid width, one along the height."""
        hg, wg = self.grid_size
        ly, lx = self.log_axis_offsets()  # [H, 2Hg-1], [H, 2Wg-1]
        my = ly.exp()[:, self.y_index].to(zg.dtype)  # [H, Hg, Hg]
        mx = lx.exp()[:, self.x_index].to(zg.dtype)  # [H, Wg, Wg]
        b, h, _, _, f = zg.shape
        out = torch.matmul(mx[:, None], zg)  # [B, H, Hg, Wg, F]
        out = torch.matmul(my, out.reshape(b, h, hg, wg * f))  # [B, H, Hg, Wg*F]
        return out.reshape(b, h, hg, wg, f)

    def _fft(self, zg: torch.Tensor) -> torch.Tensor:
        """2-D *linear* convolution of the grid with the offset table, via zero-padded rfft2.

        Padding each axis to >= 2n-1 keeps the wrap-around of the circular convolution out of
        the n outputs we keep. Runs in fp32 (or fp64) outside autocast.
        """
        hg, wg = self.grid_size
        dtype = torch.float64 if zg.dtype == torch.float64 else torch.float32
        with torch.autocast(zg.device.type, enabled=False):
            table = self.mask_offsets().to(dtype)  # [H, 2Hg-1, 2Wg-1]
            s = (fft_size(2 * hg - 1), fft_size(2 * wg - 1))
            zt = zg.to(dtype).movedim(-1, 2)  # [B, H, F, Hg, Wg]
            zf = torch.fft.rfft2(zt, s=s)
            tf = torch.fft.rfft2(table, s=s)[:, None]  # [H, 1, s0, s1//2+1]
            out = torch.fft.irfft2(zf * tf, s=s)[..., hg - 1 : 2 * hg - 1, wg - 1 : 2 * wg - 1]
        return out.movedim(2, -1).to(zg.dtype)  # [B, H, Hg, Wg, F]

    def log_axis_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _kron_attend(self, fq: torch.Tensor, fk: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """``attend`` over the grid tokens alone for a separable mask: [B, H, N, e]."""
        raise NotImplementedError


class MaskedKernelMatrix(torch.autograd.Function):
    """(M * fq fk^T) v1 for impl=quadratic, never holding the [B, H, L, L] kernel matrix.

    Autograd would keep fq fk^T and its masked copy for every batch element and head; this keeps
    fq, fk, v1 and M, computes a few batch elements at a time (``SCORES_CHUNK``), and recomputes
    fq fk^T in the backward. The mask's gradient is sum over the batch of (g v1^T) * fq fk^T.
    """

    @staticmethod
    def forward(ctx, fq, fk, v1, mask):
        b, h, n, _ = fq.shape
        out = v1.new_empty(b, h, n, v1.shape[-1])
        for rows in batch_chunks(b, h * n * fk.shape[2]):
            out[rows] = (fq[rows] @ fk[rows].transpose(-2, -1)).mul_(mask) @ v1[rows]
        ctx.save_for_backward(fq, fk, v1, mask)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        fq, fk, v1, mask = ctx.saved_tensors
        b, h, n, _ = fq.shape
        dfq, dfk, dv1 = torch.empty_like(fq), torch.empty_like(fk), torch.empty_like(v1)
        dmask = torch.zeros_like(mask) if ctx.needs_input_grad[3] else None
        for rows in batch_chunks(b, h * n * fk.shape[2]):
            kernel = fq[rows] @ fk[rows].transpose(-2, -1)  # [b, H, L, L]
            d_masked = grad_out[rows] @ v1[rows].transpose(-2, -1)
            if dmask is not None:
                dmask += (d_masked * kernel).sum(0)
            dv1[rows] = kernel.mul_(mask).transpose(-2, -1) @ grad_out[rows]
            d_kernel = d_masked.mul_(mask)
            dfq[rows] = d_kernel @ fk[rows]
            dfk[rows] = d_kernel.transpose(-2, -1) @ fq[rows]
        return dfq, dfk, dv1, dmask


def exp_axis_blocks(rate: torch.Tensor, size: int, tiles: int) -> tuple[torch.Tensor, ...]:
    """The tile structure of r^|i - j| (r = exp(-rate) per head) on an axis of ``tiles`` tiles of ``size``.

    With i = I * size + s and j = J * size + t: inside a tile (I = J) the entry is T[s, t]; between
    tiles it is rank one, u[dir, s] * C[dir, I, J] * w[dir, t], where dir 0 is a key tile before the
    query tile (r^s r^((I-J-1) size) r^(size-t)) and dir 1 a key tile after it. Every factor is a
    power of r <= 1, so nothing overflows. Returns T [H, size, size], u and w [H, 2, size] and
    C [H, 2, tiles, tiles] (zero on the diagonal).
    """
    a = rate[:, None, None]
    pos = torch.arange(size, dtype=rate.dtype, device=rate.device)
    inside = torch.exp(-a * (pos[:, None] - pos[None, :]).abs())
    u = torch.exp(-a * torch.stack([pos, size - pos]))
    w = torch.exp(-a * torch.stack([size - pos, pos]))
    tile = torch.arange(tiles, device=rate.device)
    gap = tile[:, None] - tile[None, :]  # query tile minus key tile
    decay = torch.exp(-a * ((gap.abs() - 1).clamp(min=0) * size).to(rate.dtype))  # [H, tiles, tiles]
    between = torch.stack([decay * (gap > 0), decay * (gap < 0)], dim=1)
    return inside, u, w, between


def keys_in_other_tile_columns(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    y_blocks: tuple[torch.Tensor, ...],
    x_blocks: tuple[torch.Tensor, ...],
    other_rows: bool,
) -> torch.Tensor:
    """The part of ``tiled_exp_attend`` from keys in other tile columns, [B, H, ty, by, tx, bx, e].

    q, k, v are tiled grids [B, H, ty, by, tx, bx, c]; ``*_blocks`` are ``exp_axis_blocks`` of
    each axis. Per key row of a tile, fk (x) v1 is summed over the tile's columns (w_x), carried
    across tile columns (C_x) and spread over the query rows of the same tile row (T_y); with
    ``other_rows`` the row sums are also summed over rows (w_y), carried across tile rows (C_y)
    and spread by u_y. The states are [B, H, 2 (direction along x), ty, by, tx, m, e].
    """
    t_y, u_y, w_y, c_y = y_blocks
    _, u_x, w_x, c_x = x_blocks
    b, h, ty, by, tx, _, m = q.shape
    e = v.shape[-1]
    f = m * e
    weighted = w_x[:, :, None, None, None, :, None] * v[:, :, None]
    rows = k[:, :, None].transpose(-2, -1) @ weighted  # fk (x) v1 summed over a tile row
    rows = c_x[:, :, None, None] @ rows.reshape(b, h, 2, ty, by, tx, f)  # carried across tile columns
    near = t_y[:, None, None] @ rows.reshape(b, h, 2, ty, by, tx * f)  # same tile row
    if other_rows:
        far = (w_y[:, None, None] @ rows.reshape(b, h, 2, ty, by, tx * f)).transpose(3, 4)
        far = c_y[:, None] @ far  # [B, H, 2 (x), 2 (y), ty, tx * f]
        near = near + u_y.transpose(-2, -1)[:, None, None] @ far.transpose(3, 4)
    reached = q[:, :, None] @ near.reshape(b, h, 2, ty, by, tx, m, e)
    return (u_x[:, :, None, None, None, :, None] * reached).sum(2)


def tiled_exp_attend(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v1: torch.Tensor,
    rate: torch.Tensor,
    grid_size: tuple[int, int],
    tile: int = KRON_TILE,
) -> torch.Tensor:
    """sum_j M_ij (fq_i . fk_j) v1_j for M = exp(-rate (|dy| + |dx|)) on the grid: [B, H, N, e].

    Exact, O(N m e), and never builds the per-token Z_j = fk_j (x) v1_j that applying My and Mx to Z
    would need (N (Hg + Wg) m e multiply-adds, most of it memory traffic). The grid is cut into
    tiles of ``tile`` x ``tile`` tokens (zero-padded: a zero key adds nothing, a zero query's row is
    cropped). Along each axis r^|i - j| is the tile-diagonal T plus rank-one blocks between tiles
    (``exp_axis_blocks``), so M = My (x) Mx splits into four kinds of key:
    - same tile: quadratic attention inside the tile with the mask T_y (x) T_x;
    - same tile row, other tile column: per key row, fk (x) v1 summed over the tile's columns
      (weights w_x), carried across tile columns (C_x), spread over the query rows by T_y;
    - other tile row and column: those row sums summed again over rows (w_y), carried across tile
      rows (C_y), spread by u_y, then contracted with fq together with the previous kind (u_x);
    - same tile column, other tile row: the transpose of the second kind.
    """
    b, h = fk.shape[:2]
    e = v1.shape[-1]
    hg, wg = grid_size
    by, bx = min(tile, hg), min(tile, wg)
    ty, tx = -(-hg // by), -(-wg // bx)

    def tiles(x: torch.Tensor) -> torch.Tensor:  # [B, H, N, c] -> [B, H, ty, by, tx, bx, c], a view
        x = F.pad(x.reshape(b, h, hg, wg, -1), (0, 0, 0, tx * bx - wg, 0, ty * by - hg))
        return x.reshape(b, h, ty, by, tx, bx, x.shape[-1])

    # Every product below is a matmul over the last two dimensions of these layouts (no einsum
    # permutes of the big [.., m, e] states).
    q, k, v = tiles(fq), tiles(fk), tiles(v1)
    y_blocks, x_blocks = exp_axis_blocks(rate, by, ty), exp_axis_blocks(rate, bx, tx)

    # Same tile: (fq fk^T * T_y (x) T_x) v1 over the tile's by * bx tokens.
    def per_tile(x: torch.Tensor) -> torch.Tensor:  # [B, H, ty, tx, by * bx, c]
        return x.transpose(3, 4).reshape(b, h, ty, tx, by * bx, x.shape[-1])

    t_y, t_x = y_blocks[0], x_blocks[0]
    inside = (t_y[:, :, None, :, None] * t_x[:, None, :, None, :]).reshape(h, 1, 1, by * bx, by * bx)
    scores = per_tile(q) @ per_tile(k).transpose(-2, -1)
    out = ((scores * inside) @ per_tile(v)).reshape(b, h, ty, tx, by, bx, e).transpose(3, 4)

    if tx > 1:  # keys in other tile columns (other tile rows included)
        out = out + keys_in_other_tile_columns(q, k, v, y_blocks, x_blocks, other_rows=ty > 1)
    if ty > 1:  # keys in other tile rows of the same tile column: the same on the transposed grid
        q, k, v = (x.permute(0, 1, 4, 5, 2, 3, 6) for x in (q, k, v))  # [B, H, tx, bx, ty, by, c]
        across = keys_in_other_tile_columns(q, k, v, x_blocks, y_blocks, other_rows=False)
        out = out + across.permute(0, 1, 4, 5, 2, 3, 6)

    out = out.reshape(b, h, ty * by, tx * bx, e)[:, :, :hg, :wg]
    return out.reshape(b, h, hg * wg, e)


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


class ExpRPE(RelativePositionMask):
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

    def log_mask_offsets(self) -> torch.Tensor:
        if self.separable:
            ly, lx = self.log_axis_offsets()
            return ly[:, :, None] + lx[:, None, :]
        a = self.rate()
        return -a[:, None, None] * self.distances(a)

    def _kron_attend(self, fq, fk, v1):
        return tiled_exp_attend(fq, fk, v1, self.rate().to(fq.dtype), self.grid_size, self.kron_tile)

    def log_axis_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """l1: exp(-a(|dy| + |dx|)) = exp(-a|dy|) exp(-a|dx|)."""
        a = self.rate()[:, None]
        dy = offsets(self.grid_size[0]).abs().to(a)
        dx = offsets(self.grid_size[1]).abs().to(a)
        return -a * dy, -a * dx


class PolyRPE(RelativePositionMask):
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

    def log_mask_offsets(self) -> torch.Tensor:
        c = F.softplus(self.raw_scale)[:, None, None]
        p = F.softplus(self.raw_power)[:, None, None]
        return -p * torch.log1p(c * self.distances(c))


RPES: dict[str, type[RelativePositionMask]] = {
    "general": GeneralRPE,
    "exp": ExpRPE,
    "poly": PolyRPE,
}


def build_rpe(
    family: str | None,
    grid_size: tuple[int, int],
    num_heads: int,
    num_prefix_tokens: int = 0,
    distance: str = "l1",
    impl: str = "auto",
    init: Mapping[str, Any] | None = None,
    **kwargs,
) -> RelativePositionMask | None:
    """The RPE module for one attention layer, or None for ``family="none"``.

    ``init`` (the ``rpe.init`` config block) and ``kwargs`` are the family's init options
    (general: init_std; exp: init_rate; poly: init_scale, init_power); None values are dropped.
    """
    kwargs = {**(init or {}), **kwargs}
    if family in (None, "none"):
        return None
    if family not in RPES:
        raise ConfigError(f"unknown rpe {family!r}: choose one of {list(FAMILIES)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return RPES[family](grid_size, num_heads, num_prefix_tokens, distance, impl, **kwargs)
    except TypeError as err:
        raise ConfigError(f"bad option for rpe={family}: {err}") from None

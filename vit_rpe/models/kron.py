"""The tiled kron algorithm: exact linear attention under an exp-l1 mask in O(N m e).

For M = exp(-rate (|dy| + |dx|)) = My (x) Mx, ``tiled_exp_attend`` computes
sum_j M_ij (fq_i . fk_j) v1_j over the grid tokens without building Z_j = fk_j (x) v1_j: along
each axis r^|i - j| is a Toeplitz block inside a tile and rank one between tiles
(``exp_axis_blocks``), so keys are summed into a few states per tile row and column. The
derivation is in docs/attention.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Side of the square tiles (measured in docs/benchmarks.md).
KRON_TILE = 8


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

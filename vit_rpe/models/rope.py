"""2-D rotary position embedding (RoPE): rotate queries and keys by their grid position.

Each head's d channels are d/2 pairs; pair c of the token at grid position (y, x) is rotated by the
angle ``y * fy[c] + x * fx[c]``. A rotation R(a) satisfies R(a)^T R(b) = R(b - a), so
(R_i q).(R_j k) = q . R(a_j - a_i) k: the score depends on the contents and on the offset
(y_j - y_i, x_j - x_i) only (Su et al., 2021, for 1-D; Heo et al., ECCV 2024, for images):

- ``axial``: the first d/4 pairs rotate with the row, the last d/4 with the column, at the
  frequencies theta^(-c / (d/4)), c = 0 .. d/4 - 1 (theta = 100: RoPE-Axial of Heo et al.);
- ``mixed``: every pair rotates with both, at learned frequencies per head and layer, initialised
  as Heo et al.'s RoPE-Mixed (theta = 10, the two halves at right angles, a random direction per
  head: timm's ``init_random_2d_freqs``).

Prefix (cls) tokens have no grid position and are not rotated (as in Heo et al.'s code and timm's
EVA): a cls query meets rotated grid keys, so it still sees where a key sits, and its own key is
the same wherever the query is. The rotation itself is timm's
``apply_rot_embed`` (interleaved pairs); the angles are computed here in the input's dtype, so
float64 tests are exact, where timm's embedding modules compute them in float32.
"""

from __future__ import annotations

import torch
from timm.layers.pos_embed_sincos import apply_rot_embed, freq_bands, init_random_2d_freqs
from torch import nn

from vit_rpe.utils.errors import ConfigError

VARIANTS = ("axial", "mixed")
DEFAULT_THETA = {"axial": 100.0, "mixed": 10.0}


def grid_positions(grid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of every grid token in row-major order, [N] each (exact in float32)."""
    hg, wg = grid_size
    y, x = torch.meshgrid(torch.arange(hg), torch.arange(wg), indexing="ij")
    return y.flatten().float(), x.flatten().float()


class RotaryPositionEmbedding(nn.Module):
    """A position encoding that rotates q and k before the attention kernel (which then sees no mask).

    Subclasses (a user's rotary family included) define ``frequencies()`` [2, H or 1, d/2]: the
    angle rate of every channel pair along the rows (index 0) and the columns (index 1).
    """

    family = "rope"

    def __init__(
        self,
        grid_size: tuple[int, int],
        num_heads: int,
        head_dim: int,
        num_prefix_tokens: int = 0,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.set_grid_size(grid_size)

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        """Rotate by the positions of another grid (evaluation at another resolution): the
        frequencies, learned or not, stay; only the positions change (extrapolation, as Heo et al.)."""
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        old = self._buffers.get("positions")
        positions = torch.stack(grid_positions(self.grid_size))  # [2, N]
        if old is not None:
            positions = positions.to(old.device)
        self.register_buffer("positions", positions, persistent=False)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, heads={self.num_heads}, head_dim={self.head_dim}"

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]

    def frequencies(self) -> torch.Tensor:
        raise NotImplementedError

    def angles(self, dtype: torch.dtype) -> torch.Tensor:
        """The rotation angle of every grid token and channel pair, [H or 1, N, d/2]."""
        f = self.frequencies().to(dtype)  # [2, H, d/2]
        pos = self.positions.to(device=f.device, dtype=dtype)  # [2, N]
        return pos[0][None, :, None] * f[0][:, None] + pos[1][None, :, None] * f[1][:, None]

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, L, d] with its grid tokens rotated (prefix tokens as they are)."""
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        a = self.angles(compute).repeat_interleave(2, -1)  # [H, N, d]: timm's interleaved layout
        p = self.num_prefix_tokens
        grid = apply_rot_embed(x[:, :, p:], a.sin(), a.cos())
        return torch.cat([x[:, :, :p], grid], dim=2) if p else grid

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(q), self.rotate(k)


class RoPE2d(RotaryPositionEmbedding):
    """``rpe=rope``: axial (fixed) or mixed (learned) 2-D rotary frequencies (module docstring)."""

    def __init__(
        self,
        grid_size: tuple[int, int],
        num_heads: int,
        head_dim: int,
        num_prefix_tokens: int = 0,
        variant: str = "axial",
        theta: float | None = None,
    ):
        if variant not in VARIANTS:
            raise ConfigError(
                f"unknown model.net.rpe_kwargs.variant {variant!r} for rpe=rope: "
                f"choose one of {list(VARIANTS)}"
            )
        if head_dim % 4:
            raise ConfigError(
                f"rpe=rope needs a head dimension divisible by 4 (channel pairs, half of them for the "
                f"rows and half for the columns), but embed_dim / num_heads = {head_dim}: change "
                "model.net.embed_dim or model.net.num_heads (e.g. embed_dim a multiple of 4 * num_heads)"
            )
        super().__init__(grid_size, num_heads, head_dim, num_prefix_tokens)
        self.variant = variant
        self.theta = float(theta if theta is not None else DEFAULT_THETA[variant])
        quarter = head_dim // 4
        if variant == "axial":
            bands = freq_bands(quarter, temperature=self.theta, step=1)  # [d/4]
            zeros = torch.zeros_like(bands)
            rows, cols = torch.cat([bands, zeros]), torch.cat([zeros, bands])  # [d/2] each
            self.register_buffer("freqs", torch.stack([rows, cols])[:, None], persistent=False)
        else:
            fx, fy = init_random_2d_freqs(head_dim, 1, num_heads, temperature=self.theta)[:, 0]
            self.freqs = nn.Parameter(torch.stack([fy, fx]))  # [2, H, d/2]: rows, columns

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant}, theta={self.theta}"

    def frequencies(self) -> torch.Tensor:
        return self.freqs

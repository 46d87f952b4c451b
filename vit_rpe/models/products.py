"""M @ z over the patch grid from the mask's structure: the separable (kron) and the FFT product.

The reference is the dense product, ``mask() @ z`` with the [H, L, L] matrix. On the Hg x Wg grid
M depends only on the offset between tokens, so its grid block can be applied without it:
``kron_grid_matmul`` for separable masks (M = My (x) Mx, two small matmuls) and
``fft_grid_matmul`` for any offset table (a 2-D linear convolution). Both take the grid part of
z as [B, H, Hg, Wg, F]; RelativePositionMask.matmul adds the cls rows and columns.
"""

from __future__ import annotations

import torch


def kron_grid_matmul(my: torch.Tensor, mx: torch.Tensor, zg: torch.Tensor) -> torch.Tensor:
    """(My (x) Mx) zg: one matmul along the grid width, one along the height.

    my [H, Hg, Hg], mx [H, Wg, Wg], zg [B, H, Hg, Wg, F] -> [B, H, Hg, Wg, F]; O(N (Hg + Wg) F).
    """
    b, h, hg, wg, f = zg.shape
    out = torch.matmul(mx[:, None], zg)  # [B, H, Hg, Wg, F]
    out = torch.matmul(my, out.reshape(b, h, hg, wg * f))  # [B, H, Hg, Wg*F]
    return out.reshape(b, h, hg, wg, f)


def fft_grid_matmul(table: torch.Tensor, zg: torch.Tensor) -> torch.Tensor:
    """The grid product for any offset mask: a 2-D *linear* convolution of zg with the table.

    table [H, 2Hg-1, 2Wg-1] holds M for every offset (dy, dx) at (dy + Hg - 1, dx + Wg - 1);
    zg [B, H, Hg, Wg, F] -> [B, H, Hg, Wg, F]. Both are zero-padded to >= 2n-1 per axis before
    rfft2, which keeps the wrap-around of the circular convolution out of the n outputs we keep.
    Runs in fp32 (or fp64) outside autocast; O(N log N F).
    """
    hg, wg = zg.shape[2:4]
    dtype = torch.float64 if zg.dtype == torch.float64 else torch.float32
    with torch.autocast(zg.device.type, enabled=False):
        s = (fft_size(2 * hg - 1), fft_size(2 * wg - 1))
        zt = zg.to(dtype).movedim(-1, 2)  # [B, H, F, Hg, Wg]
        zf = torch.fft.rfft2(zt, s=s)
        tf = torch.fft.rfft2(table.to(dtype), s=s)[:, None]  # [H, 1, s0, s1//2+1]
        out = torch.fft.irfft2(zf * tf, s=s)[..., hg - 1 : 2 * hg - 1, wg - 1 : 2 * wg - 1]
    return out.movedim(2, -1).to(zg.dtype)  # [B, H, Hg, Wg, F]


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

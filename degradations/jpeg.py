"""Real-ESRGAN's JPEG: the block codec its training applies in torch (BasicSR's DiffJPEG, rounding
not differentiable), written from the JPEG equations (ITU-T T.81, Annex A) with DiffJPEG's choices.

Real-ESRGAN does not run libjpeg. Its codec differs from libjpeg in ways that make it harsher
(mean PSNR of one round trip on crops of the shared photos: 0.2-0.9 dB lower at 128x128, 2.5-4.6
dB lower at 83x101; bench/degrade.py measures the effect on the whole degradation):

- the image is zero-padded (black) on the right and bottom to a multiple of 16, so the last block
  row and column of an odd-sized image code a hard edge and ring;
- chroma is 2x2 averaged and comes back by pixel repetition (libjpeg interpolates);
- the quantisation tables are the Annex K tables scaled by the IJG quality factor but neither
  rounded nor clipped to [1, 255], and transposed (u: vertical frequency meets the table's column);
- nothing is rounded to 8 bits on the way: the output is float, clipped to [0, 1].

    y = jpeg(x, 62)   # x (N, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-T T.81 Annex K tables (natural order, rows = vertical frequency)
_LUMA = [
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
]
_CHROMA = [[17, 18, 24, 47] + [99] * 4, [18, 21, 26, 66] + [99] * 4, [24, 26, 56] + [99] * 5, [47, 66] + [99] * 6]
_CHROMA += [[99] * 8] * 4
# JFIF RGB -> YCbCr (rows Y, Cb, Cr) and its inverse (rows R, G, B; columns Y, Cb - 128, Cr - 128)
_RGB2YCC = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
_YCC2RGB = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]


def quality_factor(quality: float) -> float:
    """IJG scaling of the Annex K tables: 50 / q below 50, 2 - q / 50 from 50 on."""
    return 50.0 / quality if quality < 50 else 2.0 - quality / 50.0


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal 8-point DCT-II, (8, 8): M[u, x] = c(u) cos((2x + 1) u pi / 16). M B M^T is the
    JPEG forward DCT of a block B (1/4 C(u) C(v) with C(0) = 1/sqrt(2) equals c(u) c(v))."""
    m = [[(math.sqrt(0.125) if u == 0 else 0.5) * math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)]
         for u in range(8)]
    return torch.tensor(m, dtype=dtype, device=device)


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, H/8, W/8, 8, 8)."""
    n, h, w = plane.shape
    return plane.reshape(n, h // 8, 8, w // 8, 8).transpose(2, 3)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    n, bh, bw = blocks.shape[:3]
    return blocks.transpose(2, 3).reshape(n, bh * 8, bw * 8)


def _code(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise (round half to even), dequantise, inverse DCT of every block."""
    coef = dct @ (_blocks(plane) - 128.0) @ dct.T
    coef = torch.round(coef / table) * table
    return _unblocks(dct.T @ coef @ dct) + 128.0


def jpeg(x: torch.Tensor, quality: float) -> torch.Tensor:
    """JPEG round trip of x (N, 3, H, W) in [0, 1] at ``quality`` (1..100, float allowed), as
    Real-ESRGAN's training degrades: 4:2:0, Annex K tables, see the module docstring."""
    n, _, h, w = x.shape
    dtype, device = x.dtype, x.device
    xp = F.pad(torch.clamp(x, 0, 1), (0, (-w) % 16, 0, (-h) % 16), mode="constant", value=0.0) * 255.0
    ycc = torch.einsum("ck,nkhw->nchw", torch.tensor(_RGB2YCC, dtype=dtype, device=device), xp)
    ycc = ycc + torch.tensor([0.0, 128.0, 128.0], dtype=dtype, device=device)[:, None, None]
    factor = quality_factor(float(quality))
    dct = _dct_matrix(dtype, device)
    luma = torch.tensor(_LUMA, dtype=dtype, device=device).T * factor  # transposed, as DiffJPEG
    chroma = torch.tensor(_CHROMA, dtype=dtype, device=device).T * factor
    y = _code(ycc[:, 0], luma, dct)
    c = F.avg_pool2d(ycc[:, 1:], kernel_size=2, stride=2)  # (N, 2, H/2, W/2)
    c = _code(c.reshape(n * 2, *c.shape[-2:]), chroma, dct).reshape(n, 2, *c.shape[-2:])
    c = c.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) - 128.0
    rgb = torch.einsum("ck,nkhw->nchw", torch.tensor(_YCC2RGB, dtype=dtype, device=device), torch.cat([y[:, None], c], 1))
    return torch.clamp(rgb, 0, 255)[..., :h, :w] / 255.0

"""Tiled sampling and tiled VAE for images larger than one UNet / VAE window (DESIGN section 7).

Sampling: the latent is covered by tiles of ``tile_size`` latent pixels every ``tile_stride``
(SUPIR: 128 and 64, i.e. 1024 px tiles overlapping by half). Each step, :class:`TiledDenoiser`
runs the denoiser on every tile and blends the predictions with Gaussian weights centred on each
tile (variance 0.01 * tile_size^2 per axis, as MultiDiffusion-style samplers do), normalised by
their sum. Everything after the denoiser in a step (restoration guidance, the Euler update) is
affine per pixel, so blending the predictions equals blending the per-tile updates. The churn
noise is drawn once per step for the whole latent by :func:`model.sampler.sample` before the
denoiser runs, so each tile sees its slice of the same noise tensor.

VAE: :func:`tiled_apply` runs an encoder (512 px tiles) or decoder (64 latent tiles) tile by
tile with an overlap, feathering the overlaps linearly. An image that fits in one tile goes
through in one piece, exactly as untiled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from catalog.config import check
from model.sampler import Denoiser

GAUSSIAN_VARIANCE = 0.01  # of the tile size squared


@dataclass
class TilingConfig:
    """When and how large images are cut into tiles."""

    tiled_sampling: bool = True
    """Sample in latent tiles when the latent is larger than one tile (else the whole latent at once)."""

    tile_size: int = 128
    """Latent tile side for sampling (SUPIR: 128 latent px = 1024 image px)."""

    tile_stride: int = 64
    """Latent distance between tile starts (SUPIR: 64, tiles overlap by half)."""

    tiled_vae: bool = True
    """Encode and decode with the VAE in overlapping tiles when the image is larger than one tile."""

    encoder_tile_size: int = 512
    """Encoder tile side in image pixels (a multiple of 8)."""

    encoder_tile_overlap: int = 64
    """Overlap of neighbouring encoder tiles in image pixels (a multiple of 8)."""

    decoder_tile_size: int = 64
    """Decoder tile side in latent pixels (64 latent = 512 image px)."""

    decoder_tile_overlap: int = 8
    """Overlap of neighbouring decoder tiles in latent pixels."""

    def __post_init__(self) -> None:
        check(self.tile_size >= 8, "tiling.tile_size", self.tile_size, "an integer >= 8")
        check(1 <= self.tile_stride <= self.tile_size, "tiling.tile_stride", self.tile_stride,
              f"an integer in [1, tile_size={self.tile_size}]")
        check(self.encoder_tile_size >= 64 and self.encoder_tile_size % 8 == 0, "tiling.encoder_tile_size",
              self.encoder_tile_size, "a multiple of 8, >= 64")
        check(0 <= self.encoder_tile_overlap < self.encoder_tile_size and self.encoder_tile_overlap % 8 == 0,
              "tiling.encoder_tile_overlap", self.encoder_tile_overlap,
              f"a multiple of 8 in [0, encoder_tile_size={self.encoder_tile_size})")
        check(self.decoder_tile_size >= 8, "tiling.decoder_tile_size", self.decoder_tile_size, "an integer >= 8")
        check(0 <= self.decoder_tile_overlap < self.decoder_tile_size, "tiling.decoder_tile_overlap",
              self.decoder_tile_overlap, f"an integer in [0, decoder_tile_size={self.decoder_tile_size})")


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of tiles of side ``tile`` every ``stride`` covering [0, length); the last one ends at length."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tile_boxes(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every tile, row by row; tiles are min(tile, side) long."""
    return [(y, min(y + tile, height), x, min(x + tile, width))
            for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]


def gaussian_weights(height: int, width: int, device=None) -> torch.Tensor:
    """Blend weights of one tile, (height, width):

        w(y, x) = exp(-(y - c_y)^2 / (2 * 0.01 * height^2)) * exp(-(x - c_x)^2 / (2 * 0.01 * width^2))
        c = (side - 1) / 2
    """
    def axis(n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float64, device=device)
        return torch.exp(-((pos - (n - 1) / 2) ** 2) / (2 * GAUSSIAN_VARIANCE * n * n))

    return (axis(height)[:, None] * axis(width)[None, :]).float()  # (h, w)


def feather_weights(height: int, width: int, ramp: float, device=None) -> torch.Tensor:
    """Linear ramps over ``ramp`` pixels at each edge, 1 inside, (height, width); never 0."""
    def axis(n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float32, device=device) + 0.5
        if ramp <= 0:
            return torch.ones(n, device=device)
        return (torch.minimum(pos, n - pos) / ramp).clamp(max=1.0)

    return axis(height)[:, None] * axis(width)[None, :]


class TiledDenoiser:
    """Drop-in for a :class:`model.sampler.Denoiser`: runs ``inner`` tile by tile, Gaussian-blended."""

    def __init__(self, inner: Denoiser, tile_size: int = 128, tile_stride: int = 64):
        self.inner = inner
        self.tile_size = tile_size
        self.tile_stride = tile_stride

    def __call__(self, x: torch.Tensor, z_lq: Optional[torch.Tensor], sigma_hat: float, sigma: float) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = torch.zeros_like(x, dtype=torch.float32)  # (B, C, h, w)
        total = x.new_zeros((h, w), dtype=torch.float32)
        for y0, y1, x0, x1 in tile_boxes(h, w, self.tile_size, self.tile_stride):
            z = None if z_lq is None else z_lq[..., y0:y1, x0:x1]
            den = self.inner(x[..., y0:y1, x0:x1], z, sigma_hat, sigma)  # (B, C, th, tw)
            weight = gaussian_weights(y1 - y0, x1 - x0, x.device)
            out[..., y0:y1, x0:x1] += den.float() * weight
            total[y0:y1, x0:x1] += weight
        return out / total


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                scale: float) -> torch.Tensor:
    """``fn`` over overlapping tiles of ``x`` (B, C, H, W), blended; fn maps an (h, w) tile to (h*scale, w*scale).

    scale is 1/8 for a VAE encoder (tiles in pixels), 8 for a decoder (tiles in latent pixels).
    Tile edges must map to whole output pixels (checked). One tile: ``fn(x)`` itself.
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    boxes = tile_boxes(h, w, tile, tile - overlap)
    for b in boxes:
        if any(abs(v * scale - round(v * scale)) > 1e-9 for v in b):
            raise ValueError(f"tile {b} of a {h}x{w} input does not map to whole pixels at scale {scale}")
    out = total = None
    for y0, y1, x0, x1 in boxes:
        y = fn(x[..., y0:y1, x0:x1]).float()  # (B, C', th*scale, tw*scale)
        if out is None:
            out = y.new_zeros((*y.shape[:2], round(h * scale), round(w * scale)))
            total = y.new_zeros(out.shape[-2:])
        oy0, oy1, ox0, ox1 = (round(v * scale) for v in (y0, y1, x0, x1))
        weight = feather_weights(oy1 - oy0, ox1 - ox0, max(overlap * scale, 1.0), y.device)
        out[..., oy0:oy1, ox0:ox1] += y * weight
        total[oy0:oy1, ox0:ox1] += weight
    return out / total


def num_tiles(height: int, width: int, tile: int, stride: int) -> int:
    return len(tile_starts(height, tile, stride)) * len(tile_starts(width, tile, stride))


__all__ = ["TilingConfig", "TiledDenoiser", "tiled_apply", "tile_boxes", "tile_starts", "gaussian_weights",
           "feather_weights", "num_tiles"]

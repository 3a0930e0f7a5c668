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

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from catalog.config import check
from model.sampler import Denoiser

GAUSSIAN_VARIANCE = 0.01  # of the tile size squared


@dataclass
class TilingConfig:
    """When and how large images are cut into tiles."""

    tiled_sampling: Optional[bool] = None
    """Sample in latent tiles when the latent is larger than one tile (else the whole latent at once).
    null: the sampler preset's (paper true; released false: the released script, with its
    non-tiled sampler config, samples the whole latent whatever its size)."""

    tile_size: int = 128
    """Latent tile side for sampling (SUPIR: 128 latent px = 1024 image px)."""

    tile_stride: int = 64
    """Latent distance between tile starts (SUPIR: 64, tiles overlap by half)."""

    tiled_vae: Optional[bool] = None
    """Encode and decode with the VAE in overlapping tiles when the image is larger than one tile.
    null: the sampler preset's (paper true; released false: the whole image at once, tiles only
    when asked, e.g. for images that do not fit in memory)."""

    vae_groupnorm: Optional[Literal["per_tile", "shared"]] = None
    """GroupNorm statistics of a tiled VAE: ``per_tile`` (each tile normalises itself, which shifts
    the colours of every tile) or ``shared`` (every GroupNorm uses the statistics of the whole
    image, gathered from all tiles, as the released tiled VAE does). null: the sampler preset's
    (paper per_tile, released shared)."""

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
                scale: float, shared_norm: Optional[nn.Module] = None) -> torch.Tensor:
    """``fn`` over overlapping tiles of ``x`` (B, C, H, W), blended; fn maps an (h, w) tile to (h*scale, w*scale).

    scale is 1/8 for a VAE encoder (tiles in pixels), 8 for a decoder (tiles in latent pixels).
    Tile edges must map to whole output pixels (checked). One tile: ``fn(x)`` itself.
    ``shared_norm``: the module whose GroupNorms use whole-image statistics (see :class:`SharedGroupNorm`).
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    boxes = tile_boxes(h, w, tile, tile - overlap)
    for b in boxes:
        if any(abs(v * scale - round(v * scale)) > 1e-9 for v in b):
            raise ValueError(f"tile {b} of a {h}x{w} input does not map to whole pixels at scale {scale}")
    if shared_norm is not None:
        outs = SharedGroupNorm(shared_norm, boxes, h, w).run(fn, x)
    else:
        outs = [fn(x[..., y0:y1, x0:x1]) for y0, y1, x0, x1 in boxes]
    out = total = None
    for (y0, y1, x0, x1), y in zip(boxes, outs):
        y = y.float()  # (B, C', th*scale, tw*scale)
        if out is None:
            out = y.new_zeros((*y.shape[:2], round(h * scale), round(w * scale)))
            total = y.new_zeros(out.shape[-2:])
        oy0, oy1, ox0, ox1 = (round(v * scale) for v in (y0, y1, x0, x1))
        weight = feather_weights(oy1 - oy0, ox1 - ox0, max(overlap * scale, 1.0), y.device)
        out[..., oy0:oy1, ox0:ox1] += y * weight
        total[oy0:oy1, ox0:ox1] += weight
    return out / total


def core_boxes(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Each tile's own part of the image, in tile coordinates: overlaps are split at their middle,
    so that the cores partition the image (every pixel counted once)."""
    def cut(lo: int, hi: int, others: list[tuple[int, int]]) -> tuple[int, int]:
        a, b = lo, hi
        for olo, ohi in others:
            if olo < lo < ohi <= hi:  # the neighbour before overlaps our start
                a = max(a, (lo + ohi) // 2)
            if lo <= olo < hi < ohi:  # the neighbour after overlaps our end
                b = min(b, (olo + hi) // 2)
        return a - lo, b - lo

    ys = sorted({(y0, y1) for y0, y1, _, _ in boxes})
    xs = sorted({(x0, x1) for _, _, x0, x1 in boxes})
    return [(*cut(y0, y1, ys), *cut(x0, x1, xs)) for y0, y1, x0, x1 in boxes]


class SharedGroupNorm:
    """Runs ``fn`` on all tiles in lockstep so that every GroupNorm of ``module`` normalises with
    the statistics of the whole image (the released tiled VAE's behaviour), not of its tile.

    One thread per tile; at each GroupNorm every tile adds the sums over its core (its share of
    the image, :func:`core_boxes`, scaled to the layer's resolution) and waits for the others:

        mean_g = sum_tiles S1_g / n_g,   var_g = sum_tiles S2_g / n_g - mean_g^2     (float64)
        y = (x - mean_g) / sqrt(var_g + eps) * weight + bias

    Tiles compute one at a time (a lock), so peak memory stays near one tile's working set plus
    the tiles' activations at one layer. Away from tile borders the result equals the untiled
    network; per-tile statistics differ everywhere.
    """

    def __init__(self, module: nn.Module, boxes: list[tuple[int, int, int, int]], height: int, width: int):
        self.norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.boxes = boxes
        self.cores = core_boxes(boxes)
        self.barrier = threading.Barrier(len(boxes))
        self.lock = threading.Lock()
        self.local = threading.local()
        self.sums: dict[int, list] = {}

    def _stats(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        i = self.local.index
        y0, y1, x0, x1 = self.boxes[i]
        cy0, cy1, cx0, cx1 = self.cores[i]
        if x.ndim == 3:  # (B, C, h*w): attention blocks normalise flattened tokens (diffusers' group_norm)
            f = (x.shape[-1] / ((y1 - y0) * (x1 - x0))) ** 0.5
            h, w = round((y1 - y0) * f), round((x1 - x0) * f)
            if h * w != x.shape[-1]:
                raise ValueError(f"GroupNorm input {tuple(x.shape)} is not a flattened {y1 - y0}x{x1 - x0} tile")
            x = x.reshape(*x.shape[:2], h, w)
        fy, fx = x.shape[-2] / (y1 - y0), x.shape[-1] / (x1 - x0)  # this layer's resolution / the tile's
        core = x[..., round(cy0 * fy):round(cy1 * fy), round(cx0 * fx):round(cx1 * fx)].double()
        core = core.reshape(x.shape[0], groups, -1)  # (B, G, n)
        return torch.stack([core.sum(-1), (core * core).sum(-1), torch.full_like(core[..., 0], core.shape[-1])])

    def _group_norm(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.local, "index", None) is None:  # a call outside the tiles: plain GroupNorm
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        call = self.local.calls
        self.local.calls += 1
        self.sums.setdefault(call, [None] * len(self.boxes))[self.local.index] = self._stats(x, norm.num_groups)
        self.lock.release()
        self.barrier.wait(timeout=3600)
        self.lock.acquire()
        s1, s2, n = torch.stack(self.sums[call]).sum(0)  # (B, G) each
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp(min=0)
        b, c = x.shape[:2]
        xg = x.reshape(b, norm.num_groups, -1)
        y = ((xg - mean[..., None].to(x.device, torch.float32)) *
             torch.rsqrt(var[..., None].to(x.device, torch.float32) + norm.eps)).reshape(x.shape).to(x.dtype)
        if norm.affine:
            y = y * norm.weight.reshape(1, c, *[1] * (x.ndim - 2)) + norm.bias.reshape(1, c, *[1] * (x.ndim - 2))
        return y

    @contextmanager
    def _patched(self) -> Iterator[None]:
        for norm in self.norms:
            norm.forward = (lambda n: (lambda x: self._group_norm(n, x)))(norm)
        try:
            yield
        finally:
            for norm in self.norms:
                del norm.forward

    def run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
        outs: list = [None] * len(self.boxes)
        errors: list[BaseException] = []
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def work(i: int) -> None:
            y0, y1, x0, x1 = self.boxes[i]
            self.local.index, self.local.calls = i, 0
            self.lock.acquire()
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    outs[i] = fn(x[..., y0:y1, x0:x1])
            except BaseException as e:  # noqa: BLE001 - re-raised below; the others must not wait forever
                errors.append(e)
                self.barrier.abort()
            finally:
                self.lock.release()

        with self._patched():
            threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(self.boxes))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        if errors:
            raise (real or errors)[0]
        return outs


def num_tiles(height: int, width: int, tile: int, stride: int) -> int:
    return len(tile_starts(height, tile, stride)) * len(tile_starts(width, tile, stride))


__all__ = ["TilingConfig", "TiledDenoiser", "tiled_apply", "SharedGroupNorm", "core_boxes", "tile_boxes", "tile_starts", "gaussian_weights",
           "feather_weights", "num_tiles"]

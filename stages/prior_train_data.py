"""Stage 0's data: decoded images, seeded random crops, fixed held-out crops, and the two
augmentations (the negative-quality blur, random recolouring). Imports no Ray."""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from catalog import codec
from model.images import to_model_range

log = logging.getLogger(__name__)


def decode_images(images: Sequence[bytes | np.ndarray]) -> list[np.ndarray | None]:
    """Encoded images (or (H, W, 3) uint8 arrays) -> (H, W, 3) uint8 arrays, EXIF orientation
    applied; None for bytes that do not decode (the caller skips them)."""
    out: list[np.ndarray | None] = []
    for data in images:
        if isinstance(data, np.ndarray):
            out.append(np.ascontiguousarray(data[..., :3]))
            continue
        try:
            out.append(codec.decode_array(bytes(data)))
        except Exception as e:  # noqa: BLE001 - a corrupt image is skipped, not fatal
            log.warning("stage 0: skipping an image that does not decode (%s: %s)", type(e).__name__, e)
            out.append(None)
    return out


def split_holdout(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """(train, held-out) image indices: the last ``holdout`` images are held out, but never all of them."""
    holdout = min(holdout, max(n - 1, 0))
    return list(range(n - holdout)), list(range(n - holdout, n))


class CropSampler:
    """Random square crops of ``size`` px from a list of images, at a random scale in [min_scale, 1].

    A crop of side size / scale is cut and resized to size (antialiased), so min_scale < 1 shows
    the model downscaled content too. Every draw comes from ``generator``."""

    def __init__(self, images: Sequence[np.ndarray], size: int, min_scale: float, generator: torch.Generator):
        self.images = [im for im in images if min(im.shape[:2]) >= size]
        if not self.images:
            raise ValueError(f"no training image has a short side of at least crop_size = {size} px")
        self.size, self.min_scale, self.g = size, min_scale, generator

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.g))

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, list[int]]:
        """(crops (B, 3, size, size) in [-1, 1], image index of each crop)."""
        crops, idx = [], []
        for _ in range(batch_size):
            i = int(torch.randint(len(self.images), (), generator=self.g))
            img = self.images[i]
            h, w = img.shape[:2]
            lo = max(self.min_scale, self.size / min(h, w))
            scale = lo + (1.0 - lo) * self._uniform()
            side = min(int(round(self.size / scale)), h, w)
            top = int(torch.randint(h - side + 1, (), generator=self.g))
            left = int(torch.randint(w - side + 1, (), generator=self.g))
            x = to_model_range(img[top : top + side, left : left + side])  # (3, side, side)
            if side != self.size:
                x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(-1, 1)
            if self._uniform() < 0.5:
                x = x.flip(-1)
            crops.append(x)
            idx.append(i)
        return torch.stack(crops), idx


def grid_crops(images: Sequence[np.ndarray], size: int, n: int) -> torch.Tensor:
    """n full-resolution crops at fixed, evenly spread positions of ``images`` -> (n, 3, size, size)."""
    out = []
    per = max(1, math.ceil(n / max(len(images), 1)))
    for img in images:
        h, w = img.shape[:2]
        if min(h, w) < size:
            continue
        k = math.ceil(math.sqrt(per))
        for j in range(per):
            r, c = divmod(j, k)
            top = int(round((h - size) * (r + 0.5) / k))
            left = int(round((w - size) * (c + 0.5) / k))
            out.append(to_model_range(img[top : top + size, left : left + size]))
    if not out:
        raise ValueError(f"no held-out image has a short side of at least {size} px")
    return torch.stack(out[:n])


def blur_lowres(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """The negative-quality look taught in stage 0: area-downsample ``factor``x, bilinear back up."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // factor), max(1, w // factor)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def recolor(x: torch.Tensor, prob: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) in [-1, 1], with probability ``prob``, gets a random channel
    permutation and then a random affine remap of each channel onto a sub-range of [-1, 1] of width
    at least 0.5, so that colours between and beyond the photos' palettes come up too."""
    out = x.clone()
    for i in range(len(x)):
        if float(torch.rand((), generator=generator)) < prob:
            width = 0.5 + 1.5 * torch.rand(x.shape[1], 1, 1, generator=generator)  # (C, 1, 1)
            low = -1 + (2 - width) * torch.rand(x.shape[1], 1, 1, generator=generator)
            permuted = x[i, torch.randperm(x.shape[1], generator=generator)]
            out[i] = low + (permuted + 1) / 2 * width
    return out

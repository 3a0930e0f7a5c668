"""Torch building blocks of the degradations: filtering, resizing, noise, JPEG, unsharp masking.

Images are float tensors in [0, 1], (1, 3, H, W) per sample unless said otherwise, on any device.
Every random draw comes from a numpy Generator seeded from the sample's parameters, so the same
parameters give the same noise on every device and in every batch.
"""
from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from PIL import Image

from catalog import codec
from catalog.schemas import PAIRS_PNG_LEVEL
from degradations.kernels import gaussian_1d, kernel_from_params

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale (used by BasicSR's gray noise)
_GRAY = (0.2989, 0.587, 0.114)


def _pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect padding (as BasicSR's filter2D); replicate where the image is too small to reflect."""
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def _fast_len(n: int) -> int:
    return scipy.fft.next_fast_len(n, real=True)


def filter2d(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve every channel of x (N, C, H, W) with one (k, k) kernel, reflect-padded, same size.

    BasicSR's filter2D semantics, computed through the FFT: the cost does not grow with the
    kernel (Real-ESRGAN's kernels reach 21x21, the USM window 51x51). The reflect-padded image is
    zero-padded to a fast FFT length, so the circular convolution equals the linear one on every
    output kept. All kernels here are point-symmetric: convolution equals correlation.
    """
    n, c, h, w = x.shape
    p = kernel.shape[-1] // 2
    xp = _pad(x, p)  # (N, C, H+2p, W+2p)
    size = (_fast_len(h + 2 * p), _fast_len(w + 2 * p))
    spec = torch.fft.rfft2(xp, s=size) * _spectrum(kernel, size, x)
    # linear conv output m + 2p is the kernel centred on pixel m of the unpadded image
    return torch.fft.irfft2(spec, s=size)[..., 2 * p : 2 * p + h, 2 * p : 2 * p + w]


def _spectrum(kernel: np.ndarray, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft2(torch.as_tensor(kernel, dtype=like.dtype, device=like.device), s=size)


def blur(x: torch.Tensor, kernel_params: dict[str, Any]) -> torch.Tensor:
    """Filter with the kernel described by ``kernel_params``."""
    return filter2d(x, kernel_from_params(kernel_params))


def resize(x: torch.Tensor, mode: str, scale_factor: float | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """F.interpolate as Real-ESRGAN calls it: area / bilinear / bicubic, align_corners False, no
    antialiasing (the aliasing of down-scaling is part of the degradation). ``bicubic_antialias``
    is MATLAB-style imresize (BSRGAN)."""
    if size is not None:
        size = (max(1, int(size[0])), max(1, int(size[1])))
        scale_factor = None
    elif min(int(d * scale_factor) for d in x.shape[-2:]) < 1:  # never resize to nothing
        size, scale_factor = (max(1, int(x.shape[-2] * scale_factor)), max(1, int(x.shape[-1] * scale_factor))), None
    if mode == "area":
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="area")
    if mode == "bicubic_antialias":
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="bicubic", align_corners=False, antialias=True)
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=False)


def _noise_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(int(seed))


def _distinct_levels(q: np.ndarray) -> int:
    """Poisson 'vals' of BasicSR: 2^ceil(log2(number of distinct 8-bit levels in q))."""
    levels = int(np.count_nonzero(np.bincount(np.rint(q * 255).astype(np.int64).ravel(), minlength=256)))
    return 2 ** math.ceil(math.log2(max(levels, 1)))


def _quantise(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp((x * 255.0).round(), 0, 255) / 255.0


def add_noise(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """Add the noise described by ``p`` and clip to [0, 1] (BasicSR clip=True, rounds=False).

    gaussian: sigma (0..255 units); poisson: scale. gray: one noise plane for all channels.
    The noise is drawn with numpy from p["seed"], so it is the same on every device.
    """
    _, c, h, w = x.shape
    rng = _noise_rng(p["seed"])
    if p["kind"] == "gaussian":
        noise = rng.standard_normal((1, 1 if p["gray"] else c, h, w), dtype=np.float32) * np.float32(p["sigma"] / 255.0)
    elif p["kind"] == "poisson":
        img = x.detach().cpu().numpy()  # (1, 3, H, W)
        if p["gray"]:
            r, g, b = _GRAY
            img = r * img[:, 0:1] + g * img[:, 1:2] + b * img[:, 2:3]  # (1, 1, H, W)
        base = np.clip(np.rint(img * 255), 0, 255) / 255.0
        vals = _distinct_levels(base)
        noise = ((rng.poisson(base * vals) / vals - base) * p["scale"]).astype(np.float32)
    else:
        raise ValueError(f"unknown noise kind {p['kind']!r}")
    return torch.clamp(x + torch.from_numpy(noise).to(x.device, x.dtype), 0, 1)


def add_correlated_noise(x: torch.Tensor, cov: list[list[float]], seed: int) -> torch.Tensor:
    """BSRGAN's channel-correlated Gaussian noise N(0, cov) per pixel, clipped to [0, 1]."""
    _, c, h, w = x.shape
    # numpy's multivariate_normal factorisation (SVD), valid when cov is only semi-definite
    _, s, vt = np.linalg.svd(np.asarray(cov, dtype=np.float64))
    a = (np.sqrt(s)[:, None] * vt).astype(np.float32)  # (3, 3)
    z = _noise_rng(seed).standard_normal((h * w, c), dtype=np.float32)
    noise = np.ascontiguousarray((z @ a).T).reshape(1, c, h, w)
    return torch.clamp(x + torch.from_numpy(noise).to(x.device, x.dtype), 0, 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded."""
    arr = x[0].detach().cpu().numpy().transpose(1, 2, 0)  # numpy: cheaper than torch ops on a busy CPU
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def from_uint8(arr: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)[None] / np.float32(255.0)
    return torch.from_numpy(chw).to(device)


def encode_png(x: torch.Tensor, compress_level: int = PAIRS_PNG_LEVEL) -> bytes:
    """x (1, 3, H, W) in [0, 1] -> the PNG bytes stored in `pairs` (catalog/codec.py's encoder;
    deterministic for a given Pillow/zlib)."""
    return codec.encode_png(to_uint8(x), compress_level=compress_level)


def jpeg_encode(x: torch.Tensor, quality: int) -> bytes:
    """JPEG bytes of x (1, 3, H, W) from the real codec (Pillow / libjpeg, 4:2:0) at integer quality."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(torch.clamp(x, 0, 1))).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip (encode, decode) at integer ``quality``."""
    with Image.open(io.BytesIO(jpeg_encode(x, quality))) as im:
        arr = np.asarray(im.convert("RGB"))
    return from_uint8(arr, x.device).to(x.dtype)


def usm_sharpen(x: torch.Tensor, radius: int = 50, weight: float = 0.5, threshold: float = 10.0) -> torch.Tensor:
    """Real-ESRGAN's unsharp masking of the GT, x (N, 3, H, W).

    residual = x - G*x; the sharpened x + weight * residual is blended in where a soft mask
    (G * [|residual| > threshold / 255]) says so, G the Gaussian of side radius (+1 if even) and
    OpenCV's default sigma (8 for 51).
    """
    k = radius + 1 if radius % 2 == 0 else radius
    g = gaussian_1d(k, 0)
    kernel = np.outer(g, g)  # (k, k), sums to 1
    residual = x - filter2d(x, kernel)
    mask = (residual.abs() * 255 > threshold).to(x.dtype)
    soft = filter2d(mask, kernel)
    sharp = torch.clamp(x + weight * residual, 0, 1)
    return soft * sharp + (1 - soft) * x


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid and clip, as Real-ESRGAN's last step on the LQ."""
    return _quantise(x)

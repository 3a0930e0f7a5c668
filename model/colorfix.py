"""Color fix of a restored image against a reference (SUPIR: the stage-1 image x_stage1 = D(z_LQ)).

Diffusion restorations drift in colour; the low frequencies of the degraded input are reliable,
so they are put back:

- wavelet: an a-trous wavelet decomposition (the B3-like 3x3 kernel [1 2 1]^T [1 2 1] / 16,
  dilated 1, 2, 4, ... per level) splits an image into high frequencies and a residual low band;
  the result is high(image) + low(reference).
- adain: each channel of the image gets the reference's mean and standard deviation.

Both work on (B, 3, H, W) float tensors in any linear range ([-1, 1] or [0, 1]).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")


def wavelet_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """One a-trous smoothing: x * k_d, k = [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16 with holes of ``dilation``.

    Replicate padding, so the output has the input's size and a constant image is unchanged.
    """
    c = x.shape[1]
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None] * k1[None, :] / 16.0).expand(c, 1, 3, 3)  # (C, 1, 3, 3)
    x = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(x, kernel, groups=c, dilation=dilation)


def wavelet_decomposition(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with x = high + low: low_0 = x, low_{i+1} = blur(low_i, 2^i), high = sum_i (low_i - low_{i+1})."""
    low = x
    high = torch.zeros_like(x)
    for i in range(levels):
        blurred = wavelet_blur(low, 2 ** i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """high(image) + low(reference): the restored detail on the reference's colours."""
    reference = _match_size(reference, image)
    high, _ = wavelet_decomposition(image.float(), levels)
    _, low = wavelet_decomposition(reference.float(), levels)
    return (high + low).to(image.dtype)


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN per channel: (x - mean_x) / std_x * std_ref + mean_ref."""
    reference = _match_size(reference, image)
    x, r = image.float(), reference.float()
    mx, sx = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    mr, sr = r.mean(dim=(2, 3), keepdim=True), r.std(dim=(2, 3), keepdim=True)
    return ((x - mx) / (sx + eps) * sr + mr).to(image.dtype)


def color_fix(image: torch.Tensor, reference: torch.Tensor,
              method: Literal["wavelet", "adain", "none"] = "wavelet") -> torch.Tensor:
    if method == "wavelet":
        return wavelet_color_fix(image, reference)
    if method == "adain":
        return adain_color_fix(image, reference)
    if method == "none":
        return image
    raise ValueError(f"color fix {method!r} is not one of {', '.join(COLOR_FIXES)}")


def _match_size(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    if reference.shape[-2:] != image.shape[-2:]:
        reference = F.interpolate(reference.float(), size=image.shape[-2:], mode="bicubic", align_corners=False)
    return reference

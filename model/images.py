"""Images <-> model tensors: the one place where pixels become [-1, 1] and back, and PSNR on them.

Every stage that feeds the VAE or saves what it decoded goes through these, so that the rounding
to the 8-bit grid and the scaling are the same everywhere (stage 0, negatives, training samples,
restore, the stage-1 evaluation)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_model_range(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 127.5 - 1.0  # a writable copy


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 in [-1, 1]."""
    return to_model_range(np.asarray(img))[None].contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, clipped and rounded to the nearest level."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) in [-1, 1] -> RGB image."""
    return Image.fromarray(to_uint8(x[0] if x.dim() == 4 else x))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, 3, H, W) images in [-1, 1], on the 8-bit grid they would be saved on: (B,)."""
    q = lambda t: ((t.float().clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    mse = (q(x) - q(y)).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(255.0 ** 2 / mse)

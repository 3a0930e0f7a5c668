"""Apply drawn degradation parameters to HQ crops: deterministic, CPU or GPU, offline or in training.

The entry points are in degradations.recipes (:func:`degrade_batch`). Each sample is processed on its own (1, 3, H, W)
tensor: after the first random resize every sample has its own size, and per-sample shapes make
the result independent of the batch it came in (regenerating one pair gives the same bytes).
Speed comes from the filters instead: every blur (the 51x51 USM window, kernels up to 21x21,
sinc) is one FFT product per sample, noise is drawn with numpy. JPEG is Real-ESRGAN's own block
codec in torch (degradations/jpeg.py) for the realesrgan recipe (params version >= 2; version 1
pairs used libjpeg and replay with it), libjpeg for BSRGAN (whose code calls OpenCV's encoder).
"""
from __future__ import annotations

from typing import Any

import torch

from degradations import jpeg as realesrgan_jpeg
from degradations import ops


def _noise(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    if p["kind"] == "correlated":
        return ops.add_correlated_noise(x, p["cov"], p["seed"])
    return ops.add_noise(x, p)


def apply_realesrgan(gt: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """Real-ESRGAN's second-order degradation of one (1, 3, H, W) crop (realesrgan_model.feed_data)."""
    h, w = gt.shape[-2:]
    scale = p["scale"]
    jpeg = realesrgan_jpeg.jpeg if p.get("version", 1) >= 2 else ops.jpeg
    # first order: blur -> resize -> noise -> JPEG
    out = ops.blur(gt, p["kernel1"])
    r = p["resize1"]
    out = ops.resize(out, r["mode"], scale_factor=r["factor"])
    out = _noise(out, p["noise1"])
    out = jpeg(out, p["jpeg1"])
    # second order, at sizes relative to the LQ size
    if p["second_order"]:
        if p["kernel2"] is not None:
            out = ops.blur(out, p["kernel2"])
        r = p["resize2"]
        out = ops.resize(out, r["mode"], size=(int(h / scale * r["factor"]), int(w / scale * r["factor"])))
        out = _noise(out, p["noise2"])
    # final: [resize to LQ size + sinc, JPEG] or [JPEG, resize + sinc]; no sinc = the pulse kernel
    f = p["final"]
    if f["order"] == "resize_first":
        out = ops.resize(out, f["mode"], size=(h // scale, w // scale))
        if f["sinc"] is not None:
            out = ops.blur(out, f["sinc"])
        out = jpeg(out, f["jpeg"])
    else:
        out = jpeg(out, f["jpeg"])
        out = ops.resize(out, f["mode"], size=(h // scale, w // scale))
        if f["sinc"] is not None:
            out = ops.blur(out, f["sinc"])
    return ops.quantise(out)


def apply_bsrgan(gt: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """BSRGAN's shuffled degradation of one (1, 3, H, W) crop, ops in their drawn order."""
    h, w = gt.shape[-2:]
    out = gt
    for op in p["ops"]:
        kind = op["op"]
        if kind == "blur":
            out = ops.blur(out, op["kernel"])
        elif kind == "resize":
            out = torch.clamp(ops.resize(out, op["mode"], scale_factor=op["factor"]), 0, 1)
        elif kind == "resize_to_lq":
            out = torch.clamp(ops.resize(out, op["mode"], size=(h // p["scale"], w // p["scale"])), 0, 1)
        elif kind == "blur_nearest":
            s = op["stride"]
            out = torch.clamp(ops.blur(out, op["kernel"])[..., 0::s, 0::s], 0, 1)
        elif kind == "noise":
            out = _noise(out, op)
        elif kind == "jpeg":
            out = ops.jpeg(out, op["quality"])
        else:
            raise ValueError(f"unknown BSRGAN op {kind!r}")
    return ops.quantise(out)


def sharpen_gt(hq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """The HQ target: USM-sharpened (Real-ESRGAN) when the params say so, else unchanged."""
    u = p.get("usm")
    return hq if u is None else ops.usm_sharpen(hq, u["radius"], u["weight"], u["threshold"])

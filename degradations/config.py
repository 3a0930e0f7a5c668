"""DegradeConfig: every parameter of the degraded-pair synthesis (DESIGN section 4, degrade).

Defaults are Real-ESRGAN x4plus (options/train_realesrgan_x4plus.yml and its dataset), except
gt_size (SUPIR trains on 512x512 crops). Fields ending in 2 are the second-order degradation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from catalog.config import check, check_prob, check_range

from degradations.kernels import GAUSSIAN_TYPES

RESIZE_MODES = ("area", "bilinear", "bicubic")
_SIX = list(GAUSSIAN_TYPES)
_SIX_PROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]


@dataclass
class DegradeConfig:
    # "realesrgan": second-order degradation (Real-ESRGAN); "bsrgan": shuffled degradation (BSRGAN)
    pipeline: Literal["realesrgan", "bsrgan"] = "realesrgan"
    # base seed; each sample draws from np.random.default_rng([seed, pair_id as int])
    seed: int = 0
    # degraded pairs per input image (pair_id_of(image_id, "degraded", variant), variant 0..n-1)
    variants_per_image: int = 1
    # side of the square HQ crop, pixels; must be divisible by scale
    gt_size: int = 512
    # downscale factor HQ -> LQ
    scale: int = 4
    # SUPIR mode: resize the LQ back to gt_size (bicubic) so LQ and HQ have the same size
    lq_resize_to_gt: bool = False
    # images per batch handed to one Degrader call (the pipeline's Ray batch size)
    batch_size: int = 8
    # Degrader actors in the Ray actor pool (at most); each uses one CPU
    workers: int = 2

    # --- GT unsharp masking (Real-ESRGAN's USMSharp; the HQ target and the input of degradation)
    usm_sharpen_gt: bool = True
    # Gaussian window side (even values are raised by 1, as cv2); sigma follows OpenCV's default
    usm_radius: int = 50
    # weight of the high-frequency residual added back
    usm_weight: float = 0.5
    # residuals below this (in 0..255 units) are not sharpened (soft mask)
    usm_threshold: float = 10.0

    # --- first degradation
    # [min, max] blur kernel side; every odd size in between is equally likely
    kernel_range: tuple[int, int] = (7, 21)
    # blur kernel types, drawn with kernel_prob
    kernel_list: list[str] = field(default_factory=lambda: list(_SIX))
    # probabilities of kernel_list (sum to 1)
    kernel_prob: list[float] = field(default_factory=lambda: list(_SIX_PROB))
    # probability that the blur is a sinc kernel instead
    sinc_prob: float = 0.1
    # [min, max] Gaussian sigma (x and y), pixels
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    # [min, max] shape beta of generalized Gaussian kernels
    betag_range: tuple[float, float] = (0.5, 4.0)
    # [min, max] shape beta of plateau kernels
    betap_range: tuple[float, float] = (1.0, 2.0)
    # probabilities of resize up / down / keep
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    # [min, max] resize factor (up draws from [1, max], down from [min, 1])
    resize_range: tuple[float, float] = (0.15, 1.5)
    # probability of Gaussian noise (else Poisson)
    gaussian_noise_prob: float = 0.5
    # [min, max] Gaussian noise sigma, 0..255 units
    noise_range: tuple[float, float] = (1.0, 30.0)
    # [min, max] Poisson noise scale
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    # probability that the noise is the same on all channels
    gray_noise_prob: float = 0.4
    # [min, max] JPEG quality (integer, both ends included)
    jpeg_range: tuple[int, int] = (30, 95)

    # --- second degradation
    # probability that the second degradation runs at all (Real-ESRGAN: always)
    second_order_prob: float = 1.0
    # probability of the second blur
    second_blur_prob: float = 0.8
    # second blur kernel types and their probabilities
    kernel_list2: list[str] = field(default_factory=lambda: list(_SIX))
    kernel_prob2: list[float] = field(default_factory=lambda: list(_SIX_PROB))
    # probability that the second blur is a sinc kernel
    sinc_prob2: float = 0.1
    # [min, max] second blur sigma, pixels (milder than the first)
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    # [min, max] beta of the second generalized / plateau kernels
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    # probabilities of the second resize up / down / keep (relative to the LQ size)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    # [min, max] second resize factor, relative to the LQ size
    resize_range2: tuple[float, float] = (0.3, 1.2)
    # second noise: Gaussian probability, sigma range (0..255), Poisson scale range, gray probability
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    # [min, max] JPEG quality of the final stage (integer, both ends included)
    jpeg_range2: tuple[int, int] = (30, 95)

    # --- final stage: 50/50 [resize to LQ size + sinc, JPEG] or [JPEG, resize + sinc]
    # probability of the final sinc filter (else no filter)
    final_sinc_prob: float = 0.8
    # probability of [resize + sinc, then JPEG] (else JPEG first)
    final_resize_first_prob: float = 0.5
    # resize interpolation modes, drawn uniformly (every resize of both pipelines)
    resize_modes: list[str] = field(default_factory=lambda: list(RESIZE_MODES))

    # --- BSRGAN (pipeline: bsrgan); Zhang et al. 2021, utils_blindsr.degradation_bsrgan
    # probability of an extra 1/2 downsampling first (scale 4 only)
    bsrgan_scale2_prob: float = 0.25
    # probability of the JPEG step inside the shuffled sequence (a final JPEG always follows)
    bsrgan_jpeg_prob: float = 0.9
    # [min, max] Gaussian noise level, 0..255 units (integer)
    bsrgan_noise_range: tuple[int, int] = (2, 25)

    def __post_init__(self) -> None:
        p = "degrade"
        check(self.seed >= 0, f"{p}.seed", self.seed, "an integer >= 0")
        check(self.variants_per_image >= 1, f"{p}.variants_per_image", self.variants_per_image, "an integer >= 1")
        check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "an integer >= 1")
        check(self.workers >= 1, f"{p}.workers", self.workers, "an integer >= 1")
        check(self.scale in (1, 2, 4, 8), f"{p}.scale", self.scale, "one of 1, 2, 4, 8")
        check(
            self.gt_size >= 16 and self.gt_size % max(self.scale, 4) == 0,
            f"{p}.gt_size", self.gt_size, f"an integer >= 16 divisible by {max(self.scale, 4)}",
        )
        check(self.usm_radius >= 1, f"{p}.usm_radius", self.usm_radius, "an integer >= 1")
        check(self.usm_weight >= 0, f"{p}.usm_weight", self.usm_weight, "a number >= 0")
        check(self.usm_threshold >= 0, f"{p}.usm_threshold", self.usm_threshold, "a number >= 0 (0..255 units)")
        lo, hi = self.kernel_range
        check(
            lo % 2 == 1 and hi % 2 == 1 and 3 <= lo <= hi,
            f"{p}.kernel_range", list(self.kernel_range), "[min, max] odd sizes with 3 <= min <= max",
        )
        for sfx in ("", "2"):
            names, probs = getattr(self, f"kernel_list{sfx}"), getattr(self, f"kernel_prob{sfx}")
            for n in names:
                check(n in GAUSSIAN_TYPES, f"{p}.kernel_list{sfx}", names, "kernel types from " + ", ".join(GAUSSIAN_TYPES))
            check(
                len(probs) == len(names) and all(x >= 0 for x in probs) and math.isclose(sum(probs), 1, abs_tol=1e-6),
                f"{p}.kernel_prob{sfx}", probs, f"{len(names)} probabilities (one per kernel_list{sfx}) summing to 1",
            )
            rp = getattr(self, f"resize_prob{sfx}")
            check(
                len(rp) == 3 and all(x >= 0 for x in rp) and math.isclose(sum(rp), 1, abs_tol=1e-6),
                f"{p}.resize_prob{sfx}", list(rp), "three probabilities (up, down, keep) summing to 1",
            )
            rr = getattr(self, f"resize_range{sfx}")
            check_range(rr, f"{p}.resize_range{sfx}", lo=1e-3)
            check(rr[0] <= 1 <= rr[1], f"{p}.resize_range{sfx}", list(rr), "[min, max] with min <= 1 <= max")
            for name in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
                check_prob(getattr(self, name + sfx), f"{p}.{name}{sfx}")
            check_range(getattr(self, f"blur_sigma{sfx}"), f"{p}.blur_sigma{sfx}", lo=1e-3)
            check_range(getattr(self, f"betag_range{sfx}"), f"{p}.betag_range{sfx}", lo=1e-3)
            check_range(getattr(self, f"betap_range{sfx}"), f"{p}.betap_range{sfx}", lo=1e-3)
            check_range(getattr(self, f"noise_range{sfx}"), f"{p}.noise_range{sfx}", lo=0)
            check_range(getattr(self, f"poisson_scale_range{sfx}"), f"{p}.poisson_scale_range{sfx}", lo=0)
            check_range(getattr(self, f"jpeg_range{sfx}"), f"{p}.jpeg_range{sfx}", lo=1, hi=100)
        for name in ("second_order_prob", "second_blur_prob", "final_sinc_prob", "final_resize_first_prob",
                     "bsrgan_scale2_prob", "bsrgan_jpeg_prob"):
            check_prob(getattr(self, name), f"{p}.{name}")
        check(
            len(self.resize_modes) >= 1 and all(m in RESIZE_MODES for m in self.resize_modes),
            f"{p}.resize_modes", self.resize_modes, "a non-empty list from " + ", ".join(RESIZE_MODES),
        )
        check_range(self.bsrgan_noise_range, f"{p}.bsrgan_noise_range", lo=0)
        check(
            self.pipeline != "bsrgan" or self.scale in (2, 4),
            f"{p}.scale", self.scale, "2 or 4 with pipeline bsrgan",
        )

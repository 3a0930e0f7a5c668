"""DegradeConfig: every parameter of the degraded-pair synthesis (DESIGN section 4, degrade).

Defaults are Real-ESRGAN x4plus (options/train_realesrgan_x4plus.yml and its dataset), except
gt_size (SUPIR trains on 512x512 crops). The recipe's parameters are nested sections:

    degrade:
      recipe: realesrgan      # a name of degradations.recipes.RECIPES
      gt_size: 512
      first:  {blur_sigma: [0.2, 3.0], jpeg_range: [30, 95], ...}   # first order
      second: {prob: 1.0, blur_prob: 0.8, ...}                      # second order
      final:  {sinc_prob: 0.8, jpeg_range: [30, 95], ...}            # final resize + sinc / JPEG
      bsrgan: {noise_range: [2, 25], ...}                           # recipe bsrgan only

Sub-sections check their values through :meth:`validate`, called by DegradeConfig with the key
prefix (``degrade.second.noise_range``), so an error names the key wherever the section sits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from catalog.config import check, check_prob, check_range
from catalog.resources import Resources, resource_keys

from degradations.kernels import GAUSSIAN_TYPES
from degradations.recipes import RECIPES

RESIZE_MODES = ("area", "bilinear", "bicubic")
_SIX = list(GAUSSIAN_TYPES)
_SIX_PROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]


@dataclass
class OrderConfig:
    """One order of Real-ESRGAN's degradation: blur -> random resize -> noise."""

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

    def validate(self, p: str) -> None:
        for n in self.kernel_list:
            check(n in GAUSSIAN_TYPES, f"{p}.kernel_list", self.kernel_list, "kernel types from " + ", ".join(GAUSSIAN_TYPES))
        probs = self.kernel_prob
        check(
            len(probs) == len(self.kernel_list) and all(x >= 0 for x in probs) and math.isclose(sum(probs), 1, abs_tol=1e-6),
            f"{p}.kernel_prob", probs, f"{len(self.kernel_list)} probabilities (one per kernel_list) summing to 1",
        )
        rp = self.resize_prob
        check(
            len(rp) == 3 and all(x >= 0 for x in rp) and math.isclose(sum(rp), 1, abs_tol=1e-6),
            f"{p}.resize_prob", list(rp), "three probabilities (up, down, keep) summing to 1",
        )
        check_range(self.resize_range, f"{p}.resize_range", lo=1e-3)
        check(self.resize_range[0] <= 1 <= self.resize_range[1], f"{p}.resize_range", list(self.resize_range),
              "[min, max] with min <= 1 <= max")
        for name in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            check_prob(getattr(self, name), f"{p}.{name}")
        for name in ("blur_sigma", "betag_range", "betap_range"):
            check_range(getattr(self, name), f"{p}.{name}", lo=1e-3)
        check_range(self.noise_range, f"{p}.noise_range", lo=0)
        check_range(self.poisson_scale_range, f"{p}.poisson_scale_range", lo=0)


@dataclass
class FirstOrderConfig(OrderConfig):
    """The first order: blur -> resize -> noise -> JPEG, from the (sharpened) HQ crop."""

    # [min, max] JPEG quality (integer, both ends included)
    jpeg_range: tuple[int, int] = (30, 95)

    def validate(self, p: str) -> None:
        super().validate(p)
        check_range(self.jpeg_range, f"{p}.jpeg_range", lo=1, hi=100)


@dataclass
class SecondOrderConfig(OrderConfig):
    """The second order: [blur] -> resize (relative to the LQ size) -> noise; milder than the first.
    Its JPEG is the final stage's."""

    # probability that the second order runs at all (Real-ESRGAN: always)
    prob: float = 1.0
    # probability of the second blur
    blur_prob: float = 0.8
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    resize_prob: tuple[float, float, float] = (0.3, 0.4, 0.3)
    # [min, max] resize factor, relative to the LQ size
    resize_range: tuple[float, float] = (0.3, 1.2)
    noise_range: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range: tuple[float, float] = (0.05, 2.5)

    def validate(self, p: str) -> None:
        super().validate(p)
        check_prob(self.prob, f"{p}.prob")
        check_prob(self.blur_prob, f"{p}.blur_prob")


@dataclass
class FinalConfig:
    """The final stage: 50/50 [resize to the LQ size + sinc, JPEG] or [JPEG, resize + sinc]."""

    # probability of the final sinc filter (else no filter)
    sinc_prob: float = 0.8
    # probability of [resize + sinc, then JPEG] (else JPEG first)
    resize_first_prob: float = 0.5
    # [min, max] JPEG quality (integer, both ends included)
    jpeg_range: tuple[int, int] = (30, 95)

    def validate(self, p: str) -> None:
        check_prob(self.sinc_prob, f"{p}.sinc_prob")
        check_prob(self.resize_first_prob, f"{p}.resize_first_prob")
        check_range(self.jpeg_range, f"{p}.jpeg_range", lo=1, hi=100)


@dataclass
class BSRGANConfig:
    """BSRGAN's shuffled degradation (recipe bsrgan); Zhang et al. 2021, utils_blindsr.degradation_bsrgan."""

    # probability of an extra 1/2 downsampling first (scale 4 only)
    scale2_prob: float = 0.25
    # probability of the JPEG step inside the shuffled sequence (a final JPEG always follows)
    jpeg_prob: float = 0.9
    # [min, max] Gaussian noise level, 0..255 units (integer)
    noise_range: tuple[int, int] = (2, 25)

    def validate(self, p: str) -> None:
        check_prob(self.scale2_prob, f"{p}.scale2_prob")
        check_prob(self.jpeg_prob, f"{p}.jpeg_prob")
        check_range(self.noise_range, f"{p}.noise_range", lo=0)


@dataclass
class DegradeConfig:
    # the degradation: a name of degradations.recipes.RECIPES (realesrgan: Real-ESRGAN's second-order
    # degradation; bsrgan: BSRGAN's shuffled degradation)
    recipe: str = "realesrgan"
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
    # images handed to one Degrader call (one Ray batch, one lake part)
    batch_size: int = 8
    # Degrader actors (read by pipelines/ only)
    resources: Resources = field(default_factory=lambda: Resources(workers=2))

    RENAMED: ClassVar[dict[str, str]] = resource_keys(workers="workers")

    # --- GT unsharp masking (Real-ESRGAN's USMSharp; the HQ target and the input of degradation)
    usm_sharpen_gt: bool = True
    # Gaussian window side (even values are raised by 1, as cv2); sigma follows OpenCV's default
    usm_radius: int = 50
    # weight of the high-frequency residual added back
    usm_weight: float = 0.5
    # residuals below this (in 0..255 units) are not sharpened (soft mask)
    usm_threshold: float = 10.0

    # [min, max] blur kernel side of every blur and sinc; every odd size in between is equally likely
    kernel_range: tuple[int, int] = (7, 21)
    # resize interpolation modes, drawn uniformly (every resize of both recipes)
    resize_modes: list[str] = field(default_factory=lambda: list(RESIZE_MODES))

    first: FirstOrderConfig = field(default_factory=FirstOrderConfig)
    second: SecondOrderConfig = field(default_factory=SecondOrderConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    bsrgan: BSRGANConfig = field(default_factory=BSRGANConfig)

    def __post_init__(self) -> None:
        p = "degrade"
        check(self.recipe in RECIPES, f"{p}.recipe", self.recipe, "one of " + ", ".join(RECIPES))
        check(self.seed >= 0, f"{p}.seed", self.seed, "an integer >= 0")
        check(self.variants_per_image >= 1, f"{p}.variants_per_image", self.variants_per_image, "an integer >= 1")
        check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "an integer >= 1")
        self.resources.check(p)
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
        check(
            len(self.resize_modes) >= 1 and all(m in RESIZE_MODES for m in self.resize_modes),
            f"{p}.resize_modes", self.resize_modes, "a non-empty list from " + ", ".join(RESIZE_MODES),
        )
        for name in ("first", "second", "final", "bsrgan"):
            getattr(self, name).validate(f"{p}.{name}")
        check(
            self.recipe != "bsrgan" or self.scale in (2, 4),
            f"{p}.scale", self.scale, "2 or 4 with recipe bsrgan",
        )

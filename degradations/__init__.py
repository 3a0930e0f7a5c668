"""The degradation library: synthetic HQ -> LQ degradations shared by every stage that makes pairs.

Used by the degrade stage (offline `pairs/degraded`), the negatives stage (LQ of negative
samples), training (on-the-fly degradation) and bench/degrade.py; it imports no stage and no Ray.

    config   DegradeConfig, every parameter of a degradation (Real-ESRGAN x4plus defaults)
    recipes  the recipe table (realesrgan, bsrgan) and the entry points below
    draw     each recipe's per-sample draws from a generator seeded by (seed, pair_id), as JSON-able dicts
    apply    each recipe's drawn parameters applied to HQ crops (deterministic; CPU or GPU)
    ops      torch building blocks: FFT filtering, resize, noise, libjpeg round trip, unsharp masking
    jpeg     Real-ESRGAN's JPEG codec (BasicSR's DiffJPEG semantics) in torch
    kernels  the blur kernels (Gaussian family, sinc) as numpy functions of their parameters
"""
from degradations.config import DegradeConfig
from degradations.recipes import RECIPES, degrade_batch, degrade_pairs, degrade_target, draw_params, summarize_params

__all__ = ["RECIPES", "DegradeConfig", "degrade_batch", "degrade_pairs", "degrade_target", "draw_params", "summarize_params"]

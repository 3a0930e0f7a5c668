"""Per-sample parameter draws of the degradations (one draw function per recipe), and their counts.

A sample's generator is np.random.default_rng([seed, key]) with key the first 64 bits of its
pair_id, so a pair can be regenerated from (seed, pair_id) alone; the drawn parameters are
returned as a JSON-able dict (kernels by their parameters) that apply() replays exactly.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from scipy.linalg import orth

if TYPE_CHECKING:  # config imports the recipe table, which imports this module
    from degradations.config import DegradeConfig, OrderConfig

# 2: realesrgan pairs use Real-ESRGAN's JPEG codec (degradations/jpeg.py), the recipe is stored as
# "recipe" (1: libjpeg, "pipeline")
PARAMS_VERSION = 2
UPDOWN = ("up", "down", "keep")


def sample_rng(seed: int, pair_id: str) -> np.random.Generator:
    """The generator of one sample: seeded by (seed, first 64 bits of pair_id)."""
    try:
        key = int(pair_id[:16], 16)
    except ValueError:  # not a hex id: hash it
        key = int(hashlib.sha256(pair_id.encode()).hexdigest()[:16], 16)
    return np.random.default_rng([int(seed), key])


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _kernel_sizes(cfg: DegradeConfig) -> list[int]:
    return list(range(cfg.kernel_range[0], cfg.kernel_range[1] + 1, 2))


def draw_kernel(rng: np.random.Generator, order: OrderConfig, sizes: list[int]) -> dict[str, Any]:
    """One blur kernel of an order as Real-ESRGAN's dataset draws it (random_mixed_kernels or sinc)."""
    size = int(rng.choice(sizes))
    if rng.random() < order.sinc_prob:
        # small kernels cannot represent low cutoffs: Real-ESRGAN limits omega to [pi/3, pi] below 13
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return {"type": "sinc", "size": size, "omega": _u(rng, lo, math.pi)}
    names, probs = order.kernel_list, order.kernel_prob
    t = names[int(rng.choice(len(names), p=np.asarray(probs) / np.sum(probs)))]
    sigma = order.blur_sigma
    p: dict[str, Any] = {"type": t, "size": size, "sigma_x": _u(rng, *sigma)}
    if t.endswith("aniso"):
        p["sigma_y"] = _u(rng, *sigma)
        p["theta"] = _u(rng, -math.pi, math.pi)
    if t.startswith(("generalized", "plateau")):
        lo, hi = order.betag_range if t.startswith("generalized") else order.betap_range
        # half the draws below 1 and half above (BasicSR's random_bivariate_* rule)
        p["beta"] = _u(rng, lo, 1) if rng.random() < 0.5 else _u(rng, 1, hi)
    return p


def draw_resize(rng: np.random.Generator, probs: Iterable[float], rng_range: Iterable[float], modes: list[str]) -> dict[str, Any]:
    lo, hi = rng_range
    updown = UPDOWN[int(rng.choice(3, p=np.asarray(probs, dtype=float)))]
    factor = _u(rng, 1, hi) if updown == "up" else _u(rng, lo, 1) if updown == "down" else 1.0
    return {"updown": updown, "factor": factor, "mode": str(rng.choice(modes))}


def draw_noise(rng: np.random.Generator, order: OrderConfig) -> dict[str, Any]:
    if rng.random() < order.gaussian_noise_prob:
        p: dict[str, Any] = {"kind": "gaussian", "sigma": _u(rng, *order.noise_range)}
    else:
        p = {"kind": "poisson", "scale": _u(rng, *order.poisson_scale_range)}
    p["gray"] = bool(rng.random() < order.gray_noise_prob)
    p["seed"] = int(rng.integers(0, 2**63 - 1))
    return p


def _jpeg(rng: np.random.Generator, q_range: Iterable[int]) -> int:
    lo, hi = q_range
    return int(rng.integers(int(lo), int(hi) + 1))


def draw_realesrgan(rng: np.random.Generator, cfg: DegradeConfig) -> dict[str, Any]:
    """Real-ESRGAN's second-order degradation, every random choice per sample."""
    sizes, first, second, final = _kernel_sizes(cfg), cfg.first, cfg.second, cfg.final
    p: dict[str, Any] = {
        "kernel1": draw_kernel(rng, first, sizes),
        "resize1": draw_resize(rng, first.resize_prob, first.resize_range, cfg.resize_modes),
        "noise1": draw_noise(rng, first),
        "jpeg1": _jpeg(rng, first.jpeg_range),
        "second_order": bool(rng.random() < second.prob),
    }
    if p["second_order"]:
        p["kernel2"] = draw_kernel(rng, second, sizes) if rng.random() < second.blur_prob else None
        p["resize2"] = draw_resize(rng, second.resize_prob, second.resize_range, cfg.resize_modes)
        p["noise2"] = draw_noise(rng, second)
    resize_first = bool(rng.random() < final.resize_first_prob)
    mode = str(rng.choice(cfg.resize_modes))
    sinc = None
    if rng.random() < final.sinc_prob:
        sinc = {"type": "sinc", "size": int(rng.choice(sizes)), "omega": _u(rng, math.pi / 3, math.pi)}
    p["final"] = {
        "order": "resize_first" if resize_first else "jpeg_first",
        "mode": mode,
        "sinc": sinc,
        "jpeg": _jpeg(rng, final.jpeg_range),
    }
    return p


def _bsrgan_blur(rng: np.random.Generator, sf: int) -> dict[str, Any]:
    """BSRGAN add_blur: anisotropic (variances l1, l2 up to 4 + sf) or isotropic (sigma up to 2 + 0.2 sf)."""
    wd2, wd = 4.0 + sf, 2.0 + 0.2 * sf
    size = 2 * int(rng.integers(2, 12)) + 3  # 7..25
    if rng.random() < 0.5:
        # BSRGAN's Sigma = V diag(l1, l2) V^-1 with V's first column (cos t, sin t): variances, not sigmas
        l1, l2 = wd2 * rng.random(), wd2 * rng.random()
        k = {"type": "aniso", "size": size, "sigma_x": max(math.sqrt(l1), 1e-3),
             "sigma_y": max(math.sqrt(l2), 1e-3), "theta": float(rng.random() * math.pi)}
    else:
        k = {"type": "iso", "size": size, "sigma_x": max(float(wd * rng.random()), 1e-3)}
    return {"op": "blur", "kernel": k}


def draw_bsrgan(rng: np.random.Generator, cfg: DegradeConfig) -> dict[str, Any]:
    """BSRGAN's shuffled degradation (utils_blindsr.degradation_bsrgan, no camera ISP model)."""
    sf = cfg.scale
    ops: list[dict[str, Any]] = []
    if sf == 4 and rng.random() < cfg.bsrgan.scale2_prob:
        mode = str(rng.choice(cfg.resize_modes)) if rng.random() < 0.5 else "bicubic_antialias"
        ops.append({"op": "resize", "factor": 0.5, "mode": mode})
        sf = 2
    order = [int(i) for i in rng.permutation(7)]
    i2, i3 = order.index(2), order.index(3)
    if i2 > i3:  # the free downsampling (2) comes before the one to the LQ size (3)
        order[i2], order[i3] = order[i3], order[i2]
    for i in order:
        if i in (0, 1):
            ops.append(_bsrgan_blur(rng, sf))
        elif i == 2:
            if rng.random() < 0.75:
                ops.append({"op": "resize", "factor": 1.0 / _u(rng, 1, 2 * sf), "mode": str(rng.choice(cfg.resize_modes))})
            else:
                sigma = _u(rng, 0.1, 0.6 * sf)
                kernel = {"type": "iso", "size": 25, "sigma_x": sigma, "shift": (sf - 1) * 0.5}
                ops.append({"op": "blur_nearest", "kernel": kernel, "stride": sf})
        elif i == 3:
            ops.append({"op": "resize_to_lq", "mode": str(rng.choice(cfg.resize_modes))})
        elif i == 4:
            level = int(rng.integers(cfg.bsrgan.noise_range[0], cfg.bsrgan.noise_range[1] + 1))
            r = rng.random()
            if r > 0.6:
                noise: dict[str, Any] = {"op": "noise", "kind": "gaussian", "gray": False, "sigma": float(level)}
            elif r < 0.4:
                noise = {"op": "noise", "kind": "gaussian", "gray": True, "sigma": float(level)}
            else:
                # channel-correlated noise: cov = |L^2 U^T D U|, L the top noise level (as BSRGAN)
                big = cfg.bsrgan.noise_range[1] / 255.0
                d = np.diag(rng.random(3))
                u = orth(rng.random((3, 3)))
                cov = np.abs(big**2 * (u.T @ d @ u))
                noise = {"op": "noise", "kind": "correlated", "cov": cov.tolist()}
            noise["seed"] = int(rng.integers(0, 2**63 - 1))
            ops.append(noise)
        elif i == 5:
            if rng.random() < cfg.bsrgan.jpeg_prob:
                ops.append({"op": "jpeg", "quality": int(rng.integers(30, 96))})
        # i == 6: camera ISP simulation, skipped (BSRGAN's public code has no ISP model either)
    ops.append({"op": "jpeg", "quality": int(rng.integers(30, 96))})
    return {"ops": ops}


def count_realesrgan(p: dict[str, Any], counts: Counter[str], sums: Counter[str]) -> None:
    """Add one Real-ESRGAN sample's draws to the category counts and value sums of summarize_params."""
    counts[f"kernel1.{p['kernel1']['type']}"] += 1
    for tag in ("1", "2"):
        if f"resize{tag}" not in p:
            continue
        r, z = p[f"resize{tag}"], p[f"noise{tag}"]
        counts[f"resize{tag}.{r['updown']}"] += 1
        counts[f"resize{tag}.mode.{r['mode']}"] += 1
        counts[f"noise{tag}.{z['kind']}"] += 1
        counts[f"noise{tag}.gray"] += z["gray"]
        sums[f"resize{tag}.factor_mean"] += r["factor"]
    sums["jpeg1.quality_mean"] += p["jpeg1"]
    counts["second_order"] += p["second_order"]
    if p["second_order"]:
        counts["kernel2.none" if p["kernel2"] is None else f"kernel2.{p['kernel2']['type']}"] += 1
    counts[f"final.{p['final']['order']}"] += 1
    counts[f"final.mode.{p['final']['mode']}"] += 1
    counts["final.sinc"] += p["final"]["sinc"] is not None
    sums["final.jpeg_quality_mean"] += p["final"]["jpeg"]


def count_bsrgan(p: dict[str, Any], counts: Counter[str], sums: Counter[str]) -> None:
    """Add one BSRGAN sample's ops to the counts and sums of summarize_params."""
    for op in p["ops"]:
        name = op["op"] if op["op"] != "noise" else f"noise.{op['kind']}{'_gray' if op.get('gray') else ''}"
        counts[f"op.{name}"] += 1
        if op["op"] == "jpeg":
            sums["jpeg.quality_sum"] += op["quality"]

"""The recipe table and the library's entry points: draw a sample's parameters, apply them.

A recipe is a named degradation: how one sample's parameters are drawn (from its own generator),
how they turn an HQ target into its LQ, and how its draws are counted in summaries. The config's
``recipe`` must name a row of :data:`RECIPES`; each sample's params store the name, so a stored
pair is replayed by the recipe that drew it.

    p = draw_params(cfg, pair_id)                       # JSON-able dict, every random choice
    target, lq = degrade_pairs(hq, [p])                 # (B, 3, H, W) HQ crops in [0, 1]
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import torch

from degradations import ops
from degradations.apply import apply_bsrgan, apply_realesrgan, sharpen_gt
from degradations.draw import PARAMS_VERSION, count_bsrgan, count_realesrgan, draw_bsrgan, draw_realesrgan, sample_rng

if TYPE_CHECKING:  # the config checks its recipe against this table
    from degradations.config import DegradeConfig


@dataclass(frozen=True)
class Recipe:
    # every random choice of one sample: (generator, config) -> JSON-able dict
    draw: Callable[[np.random.Generator, "DegradeConfig"], dict[str, Any]]
    # the LQ of one HQ target (1, 3, H, W) from those choices, before any lq_resize_to_gt
    apply: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]
    # adds one sample's choices to the (counts, sums) of summarize_params
    count: Callable[[dict[str, Any], Counter, Counter], None]


RECIPES: dict[str, Recipe] = {
    # Real-ESRGAN's second-order degradation (Wang et al. 2021): sections first, second, final
    "realesrgan": Recipe(draw_realesrgan, apply_realesrgan, count_realesrgan),
    # BSRGAN's shuffled degradation (Zhang et al. 2021): section bsrgan
    "bsrgan": Recipe(draw_bsrgan, apply_bsrgan, count_bsrgan),
}


def recipe_of(p: dict[str, Any]) -> Recipe:
    """The recipe that drew params ``p`` (params version 1 called the field "pipeline")."""
    name = p.get("recipe", p.get("pipeline"))
    if name not in RECIPES:
        raise ValueError(f"params name recipe {name!r}; known recipes are {', '.join(RECIPES)}")
    return RECIPES[name]


def draw_params(cfg: DegradeConfig, pair_id: str, image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Every random choice of one sample, as a JSON-able dict.

    image_size (H, W) of the decoded image adds the gt_size crop position (drawn last, so the
    degradation draws do not depend on the image size); None for inputs already cropped.
    """
    rng = sample_rng(cfg.seed, pair_id)
    p: dict[str, Any] = {
        "version": PARAMS_VERSION,
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "pair_id": pair_id,
        "gt_size": cfg.gt_size,
        "scale": cfg.scale,
        "lq_resize_to_gt": cfg.lq_resize_to_gt,
        "usm": {"radius": cfg.usm_radius, "weight": cfg.usm_weight, "threshold": cfg.usm_threshold}
        if cfg.usm_sharpen_gt else None,
    }
    p.update(RECIPES[cfg.recipe].draw(rng, cfg))
    if image_size is not None:
        h, w = image_size
        p["crop"] = [int(rng.integers(0, h - cfg.gt_size + 1)), int(rng.integers(0, w - cfg.gt_size + 1))]
    return p


def degrade_target(target: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """The LQ of one HQ target (1, 3, H, W) on the 8-bit grid (already sharpened, as stored in
    `pairs.hq`): regenerating a pair from its row needs nothing else."""
    lq = recipe_of(p).apply(target, p)
    if p["lq_resize_to_gt"]:  # SUPIR mode: LQ back at the HQ size
        lq = ops.quantise(ops.resize(lq, "bicubic", size=tuple(target.shape[-2:])))
    return lq


def degrade_pairs(
    hq: torch.Tensor, params: Sequence[dict[str, Any]], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, lq) for HQ crops (B, 3, H, W) in [0, 1] and one param dict per sample.

    target is the USM-sharpened HQ rounded to 8 bits (what `pairs.hq` stores; the degradation
    starts from it), (B, 3, H, W); lq is (B, 3, H/scale, W/scale), or (B, 3, H, W) with
    lq_resize_to_gt (SUPIR mode, bicubic), on the 8-bit grid.
    """
    if hq.ndim != 4 or hq.shape[1] != 3:
        raise ValueError(f"hq must be (B, 3, H, W), got {tuple(hq.shape)}")
    if len(params) != hq.shape[0]:
        raise ValueError(f"got {len(params)} param dicts for a batch of {hq.shape[0]}")
    device = hq.device if device is None else torch.device(device)
    targets, lqs = [], []
    for i, p in enumerate(params):
        gt = hq[i : i + 1].to(device, torch.float32)  # (1, 3, H, W)
        target = ops.quantise(sharpen_gt(gt, p))
        targets.append(target)
        lqs.append(degrade_target(target, p))
    return torch.cat(targets), torch.cat(lqs)


def degrade_batch(hq: torch.Tensor, params: Sequence[dict[str, Any]], device: torch.device | str | None = None) -> torch.Tensor:
    """The LQ of HQ crops (B, 3, H, W) in [0, 1]: for on-the-fly degradation in training.

    Use :func:`degrade_pairs` to also get the USM-sharpened target."""
    return degrade_pairs(hq, params, device)[1]


def summarize_params(params: Iterable[dict[str, Any] | str]) -> dict[str, float]:
    """Distribution of drawn parameters as flat metrics (frequencies in [0, 1], means).

    Accepts dicts or their JSON strings; rows without params (failed rows) are skipped.
    """
    counts: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    n = 0
    for p in params:
        if not p:
            continue
        p = json.loads(p) if isinstance(p, str) else p
        n += 1
        recipe_of(p).count(p, counts, sums)
    if n == 0:
        return {"n": 0.0}
    out = {"n": float(n)}
    n2 = max(counts["second_order"], 1)
    # second-order frequencies are conditional on the second order running
    out.update({k: v / (n2 if k.startswith(("kernel2", "resize2", "noise2")) else n) for k, v in sorted(counts.items())})
    for k, v in sums.items():
        if k.startswith(("resize2", "noise2")):
            out[k] = v / n2
        elif k == "jpeg.quality_sum":
            out["jpeg.quality_mean"] = v / max(counts["op.jpeg"], 1)
        else:
            out[k] = v / n
    return out

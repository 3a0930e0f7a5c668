"""Stage 1's measured target (issue 7), on degraded pairs: how close D(E_dr(x_LQ)) comes to the
HQ crop, next to bicubic upscaling of x_LQ and to the decoder's own ceiling D(E(x_GT)), which is
stage 1's training target (DESIGN section 5). PSNR in dB over images in [-1, 1].

Used by tests/stages/test_train_psnr.py (the demo's budget) and bench/stage1.py (any photos, any budget).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from model.images import psnr


def pair_tensors(rows: Sequence[Mapping[str, Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`pairs` rows -> (HQ, LQ upscaled bicubic to the HQ size) tensors; the LQ is also the bicubic baseline."""
    from catalog import codec
    from model.images import to_tensor

    out = []
    for row in rows:
        hq = codec.decode_array(bytes(row["hq"]))
        lq = codec.decode_rgb(bytes(row["lq"])).resize((hq.shape[1], hq.shape[0]), Image.Resampling.BICUBIC)
        out.append((to_tensor(hq), to_tensor(lq)))
    return out


@torch.no_grad()
def stage1_scores(model, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Mean PSNR (dB) over ``pairs`` of: bicubic (LQ vs HQ), vae_ceiling (D(E(x_GT)) vs HQ),
    edr (D(E_dr(x_LQ)) vs HQ) and edr_vs_ceiling (D(E_dr(x_LQ)) vs D(E(x_GT)), what stage 1 minimises)."""
    scores: dict[str, list[float]] = {"bicubic": [], "vae_ceiling": [], "edr": [], "edr_vs_ceiling": []}
    for hq, lq in pairs:
        ceiling = model.decode(model.encode(hq)).float().clamp(-1, 1)
        restored = model.decode(model.encode_lq(lq)).float()
        for key, a, b in (("bicubic", lq, hq), ("vae_ceiling", ceiling, hq), ("edr", restored, hq),
                          ("edr_vs_ceiling", restored, ceiling)):
            scores[key].append(float(psnr(a, b).mean()))
    return {k: round(float(np.mean(v)), 3) for k, v in scores.items()}

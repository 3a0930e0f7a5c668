"""Stage 1 on held-out pairs with a stage-0 prior: D(E_dr(x_LQ)) against the HQ image, against the
decoder's own ceiling D(E(x_GT)), and against bicubic upscaling (PSNR, printed).

The prior is SUPIR_TEST_PRIOR (a stage-0 folder, e.g. the demo's) when set, else the small test
prior of tests/prior_fixtures.py. D(E_dr(x_LQ)) cannot be better than the decoder's ceiling
D(E(x_GT)); when that ceiling is below bicubic (a prior trained for seconds), beating bicubic is
impossible and the test says so (xfail with the numbers) instead of passing or hiding it."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import ModelConfig
from stages.train import LocalSession, TrainConfig, load_parts, train_loop
from stages.train_data import decode
from train_helpers import make_pairs, sample_photos

pytestmark = pytest.mark.slow


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * torch.log10(4.0 / ((a.clamp(-1, 1) - b) ** 2).mean()))


def tiles(row: dict, size: int, gt: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(HQ, bicubic-upscaled LQ) tiles of one pair, (1, 3, size, size) in [-1, 1]."""
    hq = torch.from_numpy(decode(row["hq"]).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    lq_img = Image.open(io.BytesIO(row["lq"])).convert("RGB").resize((gt, gt), Image.Resampling.BICUBIC)
    lq = torch.from_numpy(np.asarray(lq_img).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return [(hq[..., y:y + size, x:x + size], lq[..., y:y + size, x:x + size])
            for y in range(0, gt, size) for x in range(0, gt, size)]


def test_stage1_on_held_out_pairs(tmp_path):
    from model.supir import build_model
    from prior_fixtures import trained_prior
    from stages.prior_train import read_stage0, split_holdout

    torch.set_num_threads(1)
    photos = sample_photos()
    prior = Path(os.environ["SUPIR_TEST_PRIOR"]) if os.environ.get("SUPIR_TEST_PRIOR") else trained_prior(tuple(photos))[0]
    stage0 = read_stage0(prior)
    # the photos stage 0 held out (the last ones) are held out here too
    train_idx, held_idx = split_holdout(len(photos), max(1, stage0["config"]["holdout_images"]))
    gt, crop = 128, stage0["config"]["crop_size"]  # train and measure at the crop size the prior's VAE learned
    train_rows = make_pairs([photos[i] for i in train_idx], gt_size=gt, variants=2).to_pylist()
    held_rows = make_pairs([photos[i] for i in held_idx], gt_size=gt, variants=2).to_pylist()
    mcfg = ModelConfig(preset="tiny", prior=str(prior))
    cfg = TrainConfig(stage="encoder", steps=150, batch_size=8, lr=1e-3, warmup_steps=10, crop_size=crop,
                      checkpoint_every=150, progress=False)
    result = train_loop(cfg, mcfg, LocalSession(train_rows, tmp_path))
    init, trained = build_model(mcfg), build_model(mcfg)
    load_parts(trained, tmp_path / "checkpoint_00000150" / "model")
    scores: dict[str, list[float]] = {k: [] for k in ("bicubic", "vae_ceiling", "edr_init", "edr_trained",
                                                      "init_vs_ceiling", "trained_vs_ceiling")}
    with torch.no_grad():
        for row in held_rows:
            for hq, lq in tiles(row, crop, gt):
                ceiling = trained.decode(trained.encode(hq)).clamp(-1, 1)  # D(E(x_GT)), stage 1's target
                before = init.decode(init.encode_lq(lq))
                after = trained.decode(trained.encode_lq(lq))
                scores["bicubic"].append(psnr(lq, hq))
                scores["vae_ceiling"].append(psnr(ceiling, hq))
                scores["edr_init"].append(psnr(before, hq))
                scores["edr_trained"].append(psnr(after, hq))
                scores["init_vs_ceiling"].append(psnr(before, ceiling))
                scores["trained_vs_ceiling"].append(psnr(after, ceiling))
    mean = {k: round(float(np.mean(v)), 2) for k, v in scores.items()}
    losses = result["losses"]
    print(f"stage 1 held-out PSNR (dB, {len(scores['bicubic'])} tiles of {crop} px): {mean}; "
          f"loss {np.mean([losses[s] for s in range(1, 11)]):.4f} -> {np.mean([losses[s] for s in range(141, 151)]):.4f}")
    assert all(np.isfinite(v) for v in mean.values())
    if mean["vae_ceiling"] <= mean["bicubic"]:
        pytest.xfail(f"the prior's decoder ceiling D(E(x_GT)) {mean['vae_ceiling']} dB is below bicubic "
                     f"{mean['bicubic']} dB: no E_dr can beat bicubic with this prior ({prior})")
    assert mean["edr_trained"] > mean["bicubic"]

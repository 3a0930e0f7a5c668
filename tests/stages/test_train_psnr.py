"""Issue 7's measured targets, with the demo's own budget (configs/demo.yaml):

- stage 0's VAE on held-out crops (the aim: 28 dB at the demo's crop size);
- stage 1 on held-out pairs: D(E_dr(x_LQ)) against the HQ image, against the decoder's own
  ceiling D(E(x_GT)) (stage 1's target), and against bicubic upscaling of x_LQ (PSNR, printed).

The prior is SUPIR_TEST_PRIOR (a stage-0 folder, e.g. the demo's) when set; otherwise the demo's
stage-0 VAE is trained here on the shipped photos (the UNet is not needed for stage 1). The last
photo by name is held out of both stages. Stage 1 uses the demo's ``train.encoder`` section."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.stage1 import pair_tensors, stage1_scores
from model.config import ModelConfig
from stages.train import LocalSession, load_parts, train_loop
from tests.support import ROOT
from tests.support.train_helpers import make_pairs, sample_photos

pytestmark = pytest.mark.slow
DEMO = ROOT / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_budget_run(tmp_path_factory):
    """Stage 0 (VAE) and stage 1 with the demo's budget, scored on held-out pairs (run once per module)."""
    tmp_path = tmp_path_factory.mktemp("stage1")
    from model.supir import build_model
    from pipelines.config import load_config
    from stages.prior_train import read_stage0, train_prior
    from stages.prior_train_data import split_holdout

    torch.set_num_threads(2)
    demo = load_config(DEMO)
    photos = sample_photos()
    if os.environ.get("SUPIR_TEST_PRIOR"):
        prior = Path(os.environ["SUPIR_TEST_PRIOR"])
    else:
        p0 = dataclasses.replace(demo.prior_train, unet_steps=0, sample_num_steps=0, progress=False, num_threads=2,
                                 device="cpu")
        prior = train_prior(p0, ModelConfig(preset="tiny"), [p.read_bytes() for p in photos],
                            [f"a photo, {p.stem.split('_by_')[0].lower()}" for p in photos], tmp_path / "prior")
    stage0 = read_stage0(prior)
    vae_psnr = stage0["vae"]["psnr_heldout"]
    train_idx, held_idx = split_holdout(len(photos), max(1, stage0["config"]["holdout_images"]))
    gt = demo.degrade.gt_size
    train_rows = make_pairs([photos[i] for i in train_idx], variants=demo.degrade.variants_per_image,
                            degrade=demo.degrade).to_pylist()
    held_rows = make_pairs([photos[i] for i in held_idx], variants=8, degrade=demo.degrade).to_pylist()
    mcfg = ModelConfig(preset="tiny", prior=str(prior))
    enc = dataclasses.replace(demo.train.encoder, checkpoint_every=demo.train.encoder.steps, progress=False)
    result = train_loop(enc, mcfg, LocalSession(train_rows, tmp_path / "stage1"))
    init, trained = build_model(mcfg), build_model(mcfg)
    load_parts(trained, tmp_path / "stage1" / f"checkpoint_{enc.steps:08d}" / "model")

    pairs = pair_tensors(held_rows)
    before, after = stage1_scores(init, pairs), stage1_scores(trained, pairs)
    mean = {"bicubic": after["bicubic"], "vae_ceiling": after["vae_ceiling"], "edr_init": before["edr"],
            "edr_trained": after["edr"], "init_vs_ceiling": before["edr_vs_ceiling"],
            "trained_vs_ceiling": after["edr_vs_ceiling"]}
    losses = result["losses"]
    k = max(1, enc.steps // 10)
    print(f"stage 0 VAE held-out PSNR {vae_psnr:.2f} dB ({stage0['vae']['steps']} steps, "
          f"{stage0['vae']['seconds']:.0f} s); stage 1 ({enc.steps} steps) on {len(held_rows)} held-out "
          f"{gt} px pairs, PSNR dB: {mean}; loss {np.mean([losses[s] for s in range(1, k + 1)]):.4f} -> "
          f"{np.mean([losses[s] for s in range(enc.steps - k + 1, enc.steps + 1)]):.4f}")
    return vae_psnr, mean


def test_stage0_vae_and_the_decoder_ceiling_on_held_out_pairs(demo_budget_run):
    vae_psnr, mean = demo_budget_run
    assert all(np.isfinite(v) for v in mean.values())
    # a regression guard just under the 28 dB aim (measured 28.3 dB; 32 norm groups or an 8x VAE give 21-27)
    assert vae_psnr > 27.0
    assert mean["vae_ceiling"] > mean["bicubic"] - 3.0  # the decoder is not the obstacle it was (8x: far below)


def test_stage1_beats_the_untrained_encoder_and_keeps_up_with_bicubic_on_held_out_pairs(demo_budget_run):
    """Issue 15: trained E_dr beats the untrained encoder on held-out pairs (measured 26.29 -> 27.24 dB
    with the 14 photos before the sunset; with the 6 of the old 8-photo demo it fell instead). Issue 7:
    against bicubic it was 2 dB behind with those 6 photos; now 27.24 vs 27.15, so it is held within
    0.5 dB (a regression guard, not a claim of a margin: 0.1 dB is inside the run-to-run noise)."""
    _, mean = demo_budget_run
    assert mean["edr_trained"] > mean["edr_init"] + 0.3
    assert mean["edr_trained"] > mean["bicubic"] - 0.5

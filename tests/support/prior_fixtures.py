"""One small stage-0 prior trained once per test process, shared by the prior and negatives tests."""
from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import torch

from model.config import ModelConfig
from stages.prior_train import read_stage0, train_prior
from stages.prior_train_config import PriorTrainConfig
from tests.support import SAMPLES

# Small enough for the CPU test budget (crop 32: latents 4x4), large enough to learn something.
TEST_PRIOR = PriorTrainConfig(vae_steps=200, unet_steps=100, crop_size=32, batch_size=8, vae_lr=5e-3, unet_lr=1e-3,
                              warmup_steps=20, min_scale=0.5, holdout_images=1, eval_crops=16, sample_num_steps=4,
                              num_threads=1, progress=False, seed=0)


def sample_images(paths) -> tuple[list[bytes], list[str]]:
    return [p.read_bytes() for p in paths], [f"a photo, {p.stem.split('_by_')[0].lower()}" for p in paths]


def trained_prior(paths: tuple[Path, ...] | None = None) -> tuple[Path, dict, float]:
    """(folder, stage0.json, seconds) of TEST_PRIOR trained on ``paths`` (default: the shipped
    sample photos, the demo's data; the last one by name is held out). Trained once per process
    for each set of photos: import this module as ``prior_fixtures`` everywhere so the cache is shared."""
    return _trained(tuple(sorted(Path(p).resolve() for p in (paths or SAMPLES.glob("*.jpg")))))


@functools.lru_cache(maxsize=None)
def _trained(paths: tuple[Path, ...]) -> tuple[Path, dict, float]:
    out = Path(tempfile.mkdtemp(prefix="supir-test-prior-")) / "prior"
    images, captions = sample_images(paths)
    t0 = time.time()
    train_prior(TEST_PRIOR, ModelConfig(preset="tiny"), images, captions, out)
    return out, read_stage0(out), time.time() - t0


def torch_threads(n: int = 1) -> None:
    torch.set_num_threads(n)

"""model/restoration.py without the stage: a RestorationConfig and a built SUPIRModel restore an image."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from catalog.config import ConfigError
from model.config import ModelConfig
from model.restoration import Restoration, RestorationConfig, working_size
from model.sampler import SamplerConfig


def test_working_size():
    assert working_size(40, 32, 1, 64) == ((40, 32), (64, 64))  # 80 x 64 -> multiples of 64
    assert working_size(500, 333, 1, 1024) == ((500, 333), (1536, 1024))
    assert working_size(2000, 1500, 1, 1024) == ((2000, 1500), (1984, 1472))  # never shrunk, only rounded
    assert working_size(128, 96, 4, 1024) == ((512, 384), (1344, 1024))


def test_restore_and_round_trip_on_a_built_model():
    from model.supir import build_model

    model = build_model(ModelConfig(preset="tiny"))
    cfg = RestorationConfig(min_size=64, progress=False, sampler=SamplerConfig(num_steps=2))
    restoration = Restoration(model, cfg, device="cpu", dtype="float32")
    rng = np.random.default_rng(0)
    img = Image.fromarray((np.kron(rng.random((4, 5, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8))  # 40 x 32
    out = restoration.restore(img, "k", "a photo", scale=2)
    assert out.size == (80, 64) and restoration.last_info["sampling_size"] == (64, 64)  # 80 x 64 -> multiples of 64
    assert restoration.last_info["steps"] == 2 and restoration.last_info["sampling_seconds"] > 0
    again = np.asarray(Restoration(model, cfg, "cpu", "float32").restore(img, "k", "a photo", scale=2))
    np.testing.assert_array_equal(np.asarray(out), again)  # noise seeded by (seed, key)
    assert restoration.round_trip(img, "stage1").size == (40, 32) and restoration.last_info["steps"] == 0
    with pytest.raises(ConfigError, match="round trip encoder = 'lq'"):
        restoration.round_trip(img, "lq")

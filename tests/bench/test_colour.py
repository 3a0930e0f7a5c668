"""bench/colour.py's pieces: its colour error is the evaluate stage's rgb_mean_diff, the estimator
starts as the LQ's block means and learns a colour bias the LQ carries."""
from __future__ import annotations

import importlib.util
import io

import numpy as np
import torch
from PIL import Image

from evaluation.metrics import ChannelMeanDiff
from tests.support import ROOT

spec = importlib.util.spec_from_file_location("bench_colour", ROOT / "bench" / "colour.py")
colour = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colour)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_colour_error_is_the_evaluate_stages_rgb_mean_diff():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + [9, -3, 0] + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    want = ChannelMeanDiff()([png(b)], [png(a)])[0]
    (hq, lq), = colour.unit_pairs([{"hq": png(a), "lq": png(b)}])
    got = colour.colour_error(lq, hq)
    assert abs(got - want) < 1e-3 and want > 5


def test_estimator_starts_as_block_means_and_learns_a_colour_bias():
    torch.manual_seed(0)
    net = colour.ColourEstimator(width=16, pool=8)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(net(x), torch.nn.functional.avg_pool2d(x, 8))
    # LQs darker than their HQs in the bright parts, as noise clipped at white makes them
    hq = torch.rand(64, 1, 32, 32).expand(-1, 3, -1, -1) * 0.5 + 0.5
    lq = hq - 0.15 * (hq - 0.5)
    pairs = list(zip(hq, lq))
    before = np.mean([colour.colour_error(l, h) for h, l in pairs])
    args = type("Args", (), {"seed": 0, "width": 16, "pool": 8, "lr": 2e-3, "steps": 300, "batch_size": 16})
    net = colour.train_estimator(pairs, args)
    with torch.no_grad():
        after = np.mean([colour.colour_error(net(l[None])[0], h) for h, l in pairs])
    assert before > 8 and after < before / 3, (before, after)

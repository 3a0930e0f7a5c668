"""bench/gpu.py run as a user runs it: without CUDA one JSON line that says so and names the restore
settings it measures; with ``--device cpu --tiny`` each part runs at toy size (the script's own
code, on a CPU)."""
from __future__ import annotations

import math

import pytest

from tests.support.bench_runs import json_lines, run_bench


def run_gpu_bench(*args: str, hide_cuda: bool = False) -> dict:
    lines = json_lines(run_bench("gpu.py", *args, **({"CUDA_VISIBLE_DEVICES": ""} if hide_cuda else {})))
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def without_cuda() -> dict:
    return run_gpu_bench(hide_cuda=True)


def test_skips_cleanly_without_cuda(without_cuda):
    assert without_cuda["skipped"].startswith("no CUDA")


def test_restore_config_is_the_released_setting_at_1024(without_cuda):
    s = without_cuda["restore_settings"]
    assert tuple(s["sampler"][k] for k in ("preset", "num_steps", "sigma_snap", "tau_r", "s_noise",
                                           "size_conditioning")) == ("released", 50, True, 0.0, 1.01, 1024)
    assert s["dtypes"] == ["bfloat16", "float16"] and s["min_size"] == 1024 and not s["tiled_vae"]
    assert s["latent"] == [128, 128] and s["tile_size"] >= 128  # one latent tile: no tiled sampling


@pytest.mark.slow
def test_restore_bench_runs_at_tiny_size_on_cpu():
    r = run_gpu_bench("--device", "cpu", "--tiny", "--skip", "train", "caption")["restore"]
    assert r["float32"]["steps"] == 2 and r["float32"]["seconds_per_step"] > 0 and r["parameters_m"]["unet"] > 0


@pytest.mark.slow
def test_train_bench_runs_at_tiny_size_on_cpu():
    t = run_gpu_bench("--device", "cpu", "--tiny", "--skip", "restore", "caption")["train"]
    assert t["steps_per_s"] > 0 and math.isfinite(t["loss"]) and t["model_tflops_per_step"] > 0
    assert t["mfu"] is None and t["trainable_params_m"] > 0


@pytest.mark.slow
def test_caption_bench_path_runs_on_cpu_with_a_narrow_llava():
    """write_llava_7b + bench/caption.py's run, end to end on the CPU: the 7B shape's processor (336
    px, patch 14, 576 image tokens) with the widths shrunk so that it runs in seconds."""
    out = run_gpu_bench("--device", "cpu", "--tiny", "--skip", "restore", "train")["caption"]
    assert [r["batch_size"] for r in out["runs"]] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["image_side"] == 336 for r in out["runs"])

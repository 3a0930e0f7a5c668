"""bench/gpu.py's pieces on the CPU at tiny size (the script itself needs CUDA and skips without it)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skips_cleanly_without_cuda(gpu, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["skipped"].startswith("no CUDA")


def test_peak_and_mfu_arithmetic(gpu):
    assert gpu.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gpu.peak_bf16_flops("NVIDIA H100 PCIe") == 756.0e12  # the longest matching name wins
    assert gpu.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312.0e12
    assert gpu.peak_bf16_flops("Some Other GPU") is None
    assert gpu.mfu(494.7e12, 1.0, 989.4e12) == pytest.approx(0.5)
    assert gpu.mfu(1e12, 0.5, 100e12) == pytest.approx(0.02)
    assert gpu.mfu(1e12, 1.0, None) is None


def test_count_flops_matches_the_matmul_formula(gpu):
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    # forward 2*B*in*out; backward: grad of input and of weight, the same again each
    assert gpu.count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * 8 * 64 * 32


def test_restore_config_is_the_released_setting_at_1024(gpu):
    from model.restoration import working_size

    cfg = gpu.restore_config("float16", 50)
    s = cfg.sampler
    assert (s.preset, s.num_steps, s.sigma_snap, s.tau_r, s.s_noise, s.size_conditioning) == \
        ("released", 50, True, 0.0, 1.01, 1024)
    assert cfg.dtype == "float16" and cfg.min_size == 1024 and not cfg.tiling.tiled_vae
    _, (w, h) = working_size(1024, 1024, 1, cfg.min_size)
    assert (w // 8, h // 8) == (128, 128) and cfg.tiling.tile_size >= 128  # one latent tile: no tiled sampling


@pytest.mark.slow
def test_restore_bench_runs_at_tiny_size_on_cpu(gpu):
    r = gpu.bench_restore(2, size=64, preset="tiny", device="cpu", dtypes=("float32",))
    assert r["float32"]["steps"] == 2 and r["float32"]["seconds_per_step"] > 0 and r["parameters_m"]["unet"] > 0


@pytest.mark.slow
def test_train_bench_runs_at_tiny_size_on_cpu(gpu):
    t = gpu.bench_train(preset="tiny", crop=64, steps=1, device="cpu")
    assert t["steps_per_s"] > 0 and math.isfinite(t["loss"]) and t["model_tflops_per_step"] > 0
    assert t["mfu"] is None and t["trainable_params_m"] > 0


def test_llava_7b_config_has_the_published_parameter_count(gpu):
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(gpu.llava_7b_config())
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072  # llava-hf/llava-1.5-7b-hf


@pytest.mark.slow
def test_caption_bench_path_runs_on_cpu_with_a_narrow_llava(gpu, monkeypatch):
    """write_llava_7b + bench/caption.py's run, end to end on the CPU: the 7B shape's processor (336
    px, patch 14, 576 image tokens) with the widths shrunk so that it runs in seconds."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    seven_b = gpu.llava_7b_config

    def narrow(vocab_size=32064, image_token_index=32000):
        full = seven_b(vocab_size, image_token_index)
        vision = CLIPVisionConfig(**{**full.vision_config.to_dict(), "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 2})
        text = LlamaConfig(**{**full.text_config.to_dict(), "hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4})
        return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_index,
                           image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default")

    monkeypatch.setattr(gpu, "llava_7b_config", narrow)
    out = gpu.bench_caption(batch_sizes=(1, 2), tokens=4, device="cpu")
    assert [r["batch_size"] for r in out["runs"]] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["image_side"] == 336 for r in out["runs"])

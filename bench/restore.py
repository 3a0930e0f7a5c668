"""Benchmark of SUPIR restoration: prints JSON with seconds per sampling step and per image.

    python bench/restore.py                      # tiny preset on the CPU
    python bench/restore.py --tiny-size 256 --tiny-steps 10

- ``tiny_cpu``: the tiny preset (random weights), one image of --tiny-size px, --tiny-steps steps,
  on the CPU in float32. Seconds per image include the VAE passes; seconds per step are the
  sampler loop alone (CFG: both prompts in one batch of 2).

The SDXL-size restore on a GPU (1024x1024, 50 steps, bf16 and fp16) is in bench/gpu.py.

Each configuration runs once to warm up (2 steps), then --repeats timed runs; the median is reported.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from model.config import ModelConfig
from model.sampler import SamplerConfig
from model.supir import build_model
from stages.restore import RestoreConfig, Restorer



def test_image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.random((size // 16, size // 16, 3))
    return Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def time_restore(model, device: str, dtype: str, size: int, steps: int, repeats: int) -> dict:
    img = test_image(size)

    def restorer(n: int) -> Restorer:
        cfg = RestoreConfig(model="-", device=device, dtype=dtype, min_size=size, progress=False,
                            sampler=SamplerConfig(num_steps=n))
        return Restorer(cfg, model=model)

    restorer(2).restore(img, "warmup")
    r = restorer(steps)
    per_image, sampling = [], []
    for i in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r.restore(img, f"bench-{i}")
        if device == "cuda":
            torch.cuda.synchronize()
        per_image.append(time.perf_counter() - t0)
        sampling.append(r.last_info["sampling_seconds"])
    out = {"size": f"{size}x{size}", "steps": steps, "dtype": dtype, "repeats": repeats,
           "seconds_per_image": round(statistics.median(per_image), 4),
           "seconds_per_step": round(statistics.median(sampling) / steps, 5),
           "steps_per_second": round(steps / statistics.median(sampling), 3),
           "latent_hw": [r.last_info["sampling_size"][1] // r.model.vae_scale_factor,
                         r.last_info["sampling_size"][0] // r.model.vae_scale_factor]}
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny-size", type=int, default=256)
    ap.add_argument("--tiny-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"torch": torch.__version__, "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    model = build_model(ModelConfig(preset="tiny"))
    result["tiny_cpu"] = time_restore(model, "cpu", "float32", args.tiny_size, args.tiny_steps, args.repeats)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of SUPIR restoration: prints JSON with seconds per sampling step and per image.

    python bench/restore.py                      # tiny preset on the CPU
    python bench/restore.py --tiny-size 256 --tiny-steps 10

- ``tiny_cpu``: the tiny preset (random weights), one image of --tiny-size px, --tiny-steps steps,
  on the CPU in float32. Seconds per image include the VAE passes; seconds per step are the
  sampler loop alone (CFG: both prompts in one batch of 2).
- ``tiny_cpu_256_to_1024``: issue 15's case, what ``pipelines/restore.py restore.upscale=4 restore.min_size=1024
  restore.sampler.num_steps=10`` does with the demo model: a 256 px photo restored to 1024 px (256x256 latents), with
  the default 128-latent sampling tiles (9 tiles a step) and with ``tiling.tile_size=256`` (one tile;
  SDXL's default tile is 1024 px of image, the tiny VAE's 4x latents make that 256). Also the CPU
  seconds of the process and the load average, since a shared machine slows wall time.

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


def time_restore(model, device: str, dtype: str, size: int, steps: int, repeats: int, upscale: int = 1,
                 min_size: int | None = None, tile_size: int | None = None) -> dict:
    """Restore a ``size`` px image to ``size * upscale`` px (short side raised to ``min_size``)."""
    import os

    from model.tiling import TilingConfig

    img = test_image(size)
    tiling = TilingConfig() if tile_size is None else TilingConfig(tile_size=tile_size, tile_stride=tile_size // 2)

    def restorer(n: int) -> Restorer:
        cfg = RestoreConfig(model="-", device=device, dtype=dtype, min_size=min_size or size, progress=False,
                            upscale=upscale, tiling=tiling, sampler=SamplerConfig(num_steps=n))
        return Restorer(cfg, model=model)

    restorer(1).restore(img, "warmup")
    r = restorer(steps)
    per_image, sampling, cpu = [], [], []
    for i in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        r.restore(img, f"bench-{i}")
        if device == "cuda":
            torch.cuda.synchronize()
        per_image.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        sampling.append(r.last_info["sampling_seconds"])
    out = {"size": f"{size}x{size}", "output": "x".join(map(str, r.last_info["size"])), "steps": steps,
           "dtype": dtype, "repeats": repeats, "tile_size": tiling.tile_size,
           "seconds_per_image": round(statistics.median(per_image), 4),
           "cpu_seconds_per_image": round(statistics.median(cpu), 2),
           "load_average_1min": round(os.getloadavg()[0], 2),
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
    ap.add_argument("--skip-1024", action="store_true", help="skip the 256 px -> 1024 px tiny restores")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"torch": torch.__version__, "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    model = build_model(ModelConfig(preset="tiny"))
    result["tiny_cpu"] = time_restore(model, "cpu", "float32", args.tiny_size, args.tiny_steps, args.repeats)
    if not args.skip_1024:
        result["tiny_cpu_256_to_1024"] = [
            time_restore(model, "cpu", "float32", 256, 10, 1, upscale=4, min_size=1024, tile_size=t)
            for t in (256, None)]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time one bf16 forward + backward of the SDXL-size SUPIR model (random weights) on a CUDA GPU.

    python bench/model_gpu.py [--latent 128] [--batch 1] [--depth 1 1 4] [--steps 3] [--checkpointing]

Prints one JSON object: seconds per forward+backward (after a warm-up step), peak GPU memory,
parameter counts. Without CUDA it prints {"skipped": ...} and exits 0. The prior is frozen and
bf16; E_dr, the adaptor and the connectors are float32 under bf16 autocast, as in training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, default=128, help="latent height = width (128 = 1024 px)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--depth", type=int, nargs=3, default=[1, 1, 4], help="adaptor transformer depth per stage")
    ap.add_argument("--steps", type=int, default=3, help="timed forward+backward steps after one warm-up")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device: this benchmark needs a GPU"}))
        return

    from model.config import ModelConfig
    from model.supir import build_model, parameter_counts

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = ModelConfig(preset="sdxl", dtype="bfloat16", adaptor_transformer_depth=tuple(args.depth),
                      gradient_checkpointing=args.checkpointing)
    t0 = time.perf_counter()
    model = build_model(cfg, device=device)
    model.train()
    build_s = time.perf_counter() - t0

    b, h = args.batch, args.latent
    g = torch.Generator(device=device).manual_seed(0)
    ehs, pooled = model.encode_prompt(["a photo of a cat"] * b)
    added = model.added_cond_kwargs(pooled, 8 * h, 8 * h)
    sample = torch.randn(b, 4, h, h, device=device, generator=g, dtype=torch.bfloat16)
    lq = torch.rand(b, 3, 8 * h, 8 * h, device=device, generator=g) * 2 - 1
    timestep = torch.randint(0, 1000, (b,), device=device, generator=g)
    target = torch.randn(b, 4, h, h, device=device, generator=g)
    params = model.trainable_parameters(("adaptor", "connectors"))

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with torch.no_grad():
                z_lq = model.encode_lq(lq)  # stage 2 trains adaptor + connectors; E_dr is fixed
            eps = model(sample, timestep, ehs, added, z_lq, conditioning_scale=1.0)
            loss = torch.nn.functional.mse_loss(eps.float(), target)
        loss.backward()
        for p in params:
            p.grad = None
        return float(loss)

    step()  # warm-up (cuDNN autotuning, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.steps
    counts = {k: round(v / 1e6, 2) for k, v in parameter_counts(model).items()}
    print(json.dumps({
        "device": torch.cuda.get_device_name(0),
        "latent": [b, 4, h, h],
        "adaptor_depth": args.depth,
        "gradient_checkpointing": args.checkpointing,
        "seconds_per_fwd_bwd": round(seconds, 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "build_seconds": round(build_s, 1),
        "parameters_m": counts,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()

"""Caption throughput: images/s and generated tokens/s at batch 1 vs batch 8 (JSON on stdout).

Builds tiny random-init LLaVAs (model/tiny_llava.py) in a temporary folder, loads them through
the same path as a real model, and captions the sample photos with a fixed caption length
(min_new_tokens = max_new_tokens), so every configuration does the same amount of work.

    python -m bench.caption                                  # tiny + small on CPU
    python -m bench.caption --model /models/llava-1.5-7b-hf --device cuda --batch-sizes 1 8 32
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog.schemas import image_id_of
from stages.caption import CaptionConfig, Captioner


def photo_bytes(n: int) -> list[bytes]:
    folder = ROOT.parent / "shared" / "data" / "photos"
    folder = folder if folder.is_dir() else ROOT / "data" / "samples"
    paths = sorted(folder.glob("*.jpg"))
    return [paths[i % len(paths)].read_bytes() for i in range(n)]


def run(model: str, batch_size: int, datas: list[bytes], args) -> dict:
    cfg = CaptionConfig(model=model, device=args.device, dtype=args.dtype, mode=args.mode,
                        max_new_tokens=args.tokens, min_new_tokens=args.tokens, batch_size=batch_size)
    cap = Captioner(cfg)
    # distinct ids so per-image seeds differ even when photos repeat
    ids = np.array([f"{image_id_of(d)}:{i}" for i, d in enumerate(datas)], dtype=object)
    data = np.empty(len(datas), dtype=object)
    data[:] = datas
    warm = max(batch_size, 1)
    cap({"image_id": ids[:warm], "bytes": data[:warm]})  # warm-up: allocator, lazy inits
    if cap.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = cap({"image_id": ids, "bytes": data})
    if cap.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    assert (out["status"] == "ok").all(), set(out["status"])
    tokens = int(out["new_tokens"].sum())
    return {
        "batch_size": batch_size,
        "images": len(datas),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(datas) / seconds, 2),
        "new_tokens_per_s": round(tokens / seconds, 1),
        "seconds_per_image": round(seconds / len(datas), 4),
        "image_side": cap.side,
        "params_M": round(sum(p.numel() for p in cap.model.parameters()) / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a real model folder or hub id (default: build tiny + small)")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], help="tiny models to build")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per caption (fixed)")
    parser.add_argument("--mode", choices=["sample", "greedy"], default="sample")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    datas = photo_bytes(args.images)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            models = {args.model: args.model}
        else:
            from model.tiny_llava import build_tiny_llava

            models = {f"tiny-llava-{s}": str(build_tiny_llava(Path(tmp) / s, size=s))
                      for s in args.sizes}
        for name, path in models.items():
            rows = [run(path, b, datas, args) for b in args.batch_sizes]
            base = rows[0]["images_per_s"]
            for r in rows:
                r["speedup_vs_first"] = round(r["images_per_s"] / base, 2)
            results.append({"model": name, "runs": rows})

    print(json.dumps({
        "bench": "caption",
        "device": args.device if args.device != "cpu" else f"cpu ({platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "mode": args.mode,
        "new_tokens_per_caption": args.tokens,
        "torch": torch.__version__,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()

"""Training throughput, printed as JSON (no assertions).

    python bench/train.py                     # tiny preset on CPU, Ray Train with 1 and 2 workers
    python bench/train.py --steps 20 --workers 1 2 --stages encoder adaptor
    python bench/train.py --cuda-only         # only the GPU step (needs CUDA)

CPU: samples/s of the tiny preset through the real pipeline (pipelines/train.py: Ray Data shard,
TorchTrainer, DDP over gloo), the median of the per-step rate the loop logs to MLflow, first two
steps excluded; plus the wall time of the whole fit (Ray Train start-up included).

CUDA (only when torch.cuda.is_available()): one stage-2 training step of the SDXL-size model
(random weights, nothing downloaded) at 512x512, bf16 autocast with the prior in bf16, gradient
checkpointing, AdamW on the adaptor + connectors; steps/s and peak GPU memory. The step is
stages/train.py's training_step, the one the loop runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_throughput(stages, workers, steps: int, crop: int, batch_size: int) -> list[dict]:
    import ray
    from mlflow import MlflowClient

    from catalog.config import from_dict
    from catalog.tracking import Tracker
    from pipelines.common import Context
    from pipelines.config import RayConfig
    from pipelines.train import TrainRunConfig, run_train
    from stages.train import TrainSection
    from train_helpers import make_lake, sample_photos

    root = Path(tempfile.mkdtemp(prefix="supir-bench-train-"))
    lake = make_lake(root / "lake", sample_photos(), gt_size=max(crop, 64))
    cpus = max(2, max(workers))  # Ray Data needs a whole CPU left free beside the workers
    ray.init(address="local", num_cpus=cpus, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}})
    out = []
    try:
        for n in workers:
            for stage in stages:
                common = {"steps": steps, "batch_size": batch_size, "crop_size": crop, "num_workers": n,
                          "checkpoint_every": steps, "cpus_per_worker": min(1.0, (cpus - 1) / n), "progress": False,
                          "lr": 1e-4}
                section = from_dict(TrainSection, {"name": f"bench-{n}", "registered_model": "",
                                                   "encoder": common, "adaptor": common}, prefix="train")
                cfg = TrainRunConfig(lake=str(root / "lake"), ray=RayConfig(num_cpus=cpus), train=section)
                tracker = Tracker(cfg.tracking, cfg.lake)
                with tracker.pipeline("bench", {}):
                    t0 = time.time()
                    summary = run_train(Context(cfg, lake, tracker), stage)
                    wall = time.time() - t0
                hist = MlflowClient(tracker.uri).get_metric_history(summary["run_id"], "samples_per_s")
                rates = [m.value for m in sorted(hist, key=lambda m: m.step)][2:]
                out.append({"device": "cpu", "preset": "tiny", "stage": stage, "workers": n, "batch_per_worker": batch_size,
                            "crop": crop, "steps": steps, "samples_per_s": statistics.median(rates) if rates else None,
                            "fit_wall_s": round(wall, 1), "cpu_count": os.cpu_count(),
                            "load_avg_1m": os.getloadavg()[0]})
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    return out


def cuda_step(preset: str = "sdxl", crop: int = 512, batch_size: int = 1, steps: int = 5, device: str = "cuda",
              trimmed: bool = True) -> dict:
    """Steps/s and peak memory of the stage-2 step (SDXL size by default)."""
    import torch

    from model.config import ModelConfig
    from model.supir import build_model, parameter_counts
    from stages.train import StageObjective, TrainConfig, training_step
    from stages.train_data import Batch

    dev = torch.device(device)
    cfg = TrainConfig(stage="adaptor", crop_size=crop, batch_size=batch_size, gradient_checkpointing=True,
                      mixed_precision="bf16", lr=1e-5, prompt_dropout=0.1)
    mcfg = ModelConfig(preset=preset, dtype="bfloat16" if dev.type == "cuda" else "float32",
                       gradient_checkpointing=True,
                       adaptor_transformer_depth=None if trimmed else (1, 2, 10) if preset == "sdxl" else None)
    t0 = time.time()
    model = build_model(mcfg, device=dev)
    build_s = time.time() - t0
    for name, module in model.trainable_modules().items():
        module.requires_grad_(name in ("adaptor", "connectors"))
    params = [p for n in ("adaptor", "connectors") for p in model.trainable_modules()[n].parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    objective = StageObjective(model, "adaptor")
    g = torch.Generator("cpu").manual_seed(0)
    batch = Batch(torch.rand(batch_size, 3, crop, crop, generator=g) * 2 - 1,
                  torch.rand(batch_size, 3, crop, crop, generator=g) * 2 - 1,
                  ["a photo of a house by a lake"] * batch_size, ["p"] * batch_size, ["degraded"] * batch_size).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    amp = True
    times = []
    for step in range(steps + 2):  # two warm-up steps
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        loss, _ = training_step(objective, model, optimizer, params, cfg, batch, 0, step, dev, amp)
        loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t)
    timed = times[2:]
    counts = parameter_counts(model)
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "preset": preset,
            "stage": "adaptor", "crop": crop, "batch_size": batch_size, "dtype": "bf16 autocast, prior bf16",
            "gradient_checkpointing": True, "adaptor_trimmed": trimmed, "steps_timed": len(timed),
            "steps_per_s": len(timed) / sum(timed), "seconds_per_step": statistics.median(timed),
            "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
            "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 1),
            "unet_params_m": round(counts["unet"] / 1e6, 1), "build_s": round(build_s, 1), "loss": float(loss)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stages", nargs="+", default=["encoder", "adaptor"], choices=["encoder", "adaptor"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--cuda-only", action="store_true")
    ap.add_argument("--cuda-steps", type=int, default=5)
    ap.add_argument("--untrimmed", action="store_true", help="CUDA step with the released (untrimmed) adaptor")
    args = ap.parse_args(argv)
    import torch

    result: dict = {"torch": torch.__version__}
    if not args.cuda_only:
        torch.set_num_threads(1)
        result["cpu"] = cpu_throughput(args.stages, args.workers, args.steps, args.crop, args.batch_size)
    if torch.cuda.is_available():
        result["cuda"] = cuda_step(steps=args.cuda_steps, trimmed=not args.untrimmed)
    else:
        result["cuda"] = "skipped: no CUDA device"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

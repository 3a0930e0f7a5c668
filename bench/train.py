"""Training throughput, printed as JSON (no assertions).

    python bench/train.py                     # tiny preset on CPU, Ray Train with 1 and 2 workers
    python bench/train.py --steps 20 --workers 1 2 --stages encoder adaptor

CPU: samples/s of the tiny preset through the real pipeline (pipelines/train.py: each worker's share,
TorchTrainer, DDP over gloo), the median of the per-step rate the loop logs to MLflow, first two
steps excluded; plus the wall time of the whole fit (Ray Train start-up included).

The SDXL-size stage-2 step on a GPU (steps/s, peak memory, MFU) is in bench/gpu.py.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_throughput(stages, workers, steps: int, crop: int, batch_size: int) -> list[dict]:
    import ray
    from mlflow import MlflowClient

    from catalog.config import from_dict
    from catalog.tracking import Tracker
    from pipelines.common import Context
    from pipelines.config import RayConfig, RunConfig
    from pipelines.train import run_train
    from stages.train import TrainSection
    from catalog.lake import Lake
    from stages.degrade import DegradeConfig, degrade_files

    root = Path(tempfile.mkdtemp(prefix="supir-bench-train-"))
    lake = Lake(str(root / "lake"))
    photos = sorted((ROOT / "data" / "samples").glob("*.jpg"))
    lake.write_part("pairs", degrade_files(photos, DegradeConfig(gt_size=max(crop, 64), scale=4, variants_per_image=1)))
    cpus = max(2, max(workers))  # Ray Data needs a whole CPU left free beside the workers
    ray.init(address="local", num_cpus=cpus, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}})
    out = []
    try:
        for n in workers:
            for stage in stages:
                common = {"steps": steps, "batch_size": batch_size, "crop_size": crop, "checkpoint_every": steps,
                          "resources": {"workers": n, "cpus_per_worker": min(1.0, (cpus - 1) / n)}, "progress": False,
                          "lr": 1e-4}
                section = from_dict(TrainSection, {"name": f"bench-{n}", "registered_model": "",
                                                   "encoder": common, "adaptor": common}, prefix="train")
                cfg = RunConfig(lake=str(root / "lake"), ray=RayConfig(num_cpus=cpus), train=section)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stages", nargs="+", default=["encoder", "adaptor"], choices=["encoder", "adaptor"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    result: dict = {"torch": torch.__version__}
    torch.set_num_threads(1)
    result["cpu"] = cpu_throughput(args.stages, args.workers, args.steps, args.crop, args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

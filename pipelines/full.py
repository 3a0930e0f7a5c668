"""The whole SUPIR pipeline as one Ray program, under one MLflow parent run.

    python pipelines/full.py --config configs/demo.yaml [key.path=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/full.py

DAG (only stages that exist are in it):

    crawl -> filter -> caption
                    -> degrade
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog.config import ConfigError, to_dict
from catalog.lake import Lake
from catalog.schemas import TABLES
from catalog.tracking import Tracker
from pipelines.common import Context, init_ray
from pipelines.config import config_yaml, load_config, parse_args
from pipelines.data import run_caption, run_degrade
from pipelines.ingest import preflight, run_crawl, run_filter

log = logging.getLogger("supir")

STAGE_RUNNERS = {
    "crawl": run_crawl,
    "filter": run_filter,
    "caption": run_caption,
    "degrade": run_degrade,
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv, __doc__.split("\n\n")[0])
    try:
        cfg = load_config(args.config, args.overrides)
        lake = Lake(cfg.lake)
        tracker = Tracker(cfg.tracking, cfg.lake)
        ctx = Context(cfg, lake, tracker)
        preflight(ctx)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    init_ray(cfg.ray)
    t0 = time.time()
    results = {}
    with tracker.pipeline("full", to_dict(cfg), config_yaml(cfg)) as parent:
        for stage in cfg.stages:
            results[stage] = STAGE_RUNNERS[stage](ctx)
        parent.log_metrics({"seconds": time.time() - t0})
    print_summary(ctx, results, time.time() - t0)
    return 0


def print_summary(ctx: Context, results: dict, seconds: float) -> None:
    lake = ctx.lake
    print(f"\nSUPIR pipeline finished in {seconds:.1f} s")
    for stage, counts in results.items():
        print(f"  {stage:8s} {counts}")
    print(f"\nLake tables:   {lake.uri('').rstrip('/')}  ({', '.join(t for t in TABLES if lake.exists(t))})")
    if ctx.tracker.enabled:
        print(f"MLflow store:  {ctx.tracker.uri}")
        print(f"  browse:      mlflow ui --backend-store-uri {ctx.tracker.uri}")
    lake_arg = "" if ctx.cfg.lake == "lake" else f" --lake {ctx.cfg.lake}"
    print(f"Try SQL:       python -m catalog.sql{lake_arg} \"SELECT status, count(*) AS n FROM images GROUP BY status\"")
    print(f"               python -m catalog.sql{lake_arg} --query drop_reasons")


if __name__ == "__main__":
    sys.exit(main())

"""The whole SUPIR pipeline as one Ray program, under one MLflow parent run.

    python pipelines/full.py --config configs/demo.yaml [key.path=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/full.py

DAG:

    crawl -> filter -> caption ---------------------------------+
                    -> degrade -> prior (stage 0) -> negatives -> train_encoder -> train_adaptor
                                                      -> restore -> ablations -> baselines -> evaluate

Held-out photos (``split``, stages/split.py) never reach stage 0, the negatives, stage 1 or stage 2;
restore scores every pair, the ablations (stages/ablations.py) the held-out ones, and evaluate
writes the split of each row into `metrics`: Table 1 is on the held-out pairs.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import cli

# Everything else is imported inside the functions: `--help` must not wait for torch, diffusers
# and Ray (10 s and 1.4 GB when they were imported here).

log = logging.getLogger("supir")


def main(argv: Sequence[str] | None = None, only: Sequence[str] | None = None, name: str = "full",
         description: str | None = None) -> int:
    """Run the configured stages (``only``: the subset an entry point such as ingest.py owns)."""
    from pipelines import logs

    logs.setup()
    args = cli.parser(description or __doc__.split("\n\n")[0], stages=only or cli.STAGES).parse_args(argv)
    from catalog.config import ConfigError, to_dict
    from pipelines.config import check_gpus, config_yaml, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        if only is not None:
            cfg.stages = [s for s in cfg.stages if s in only]
        if args.print_config:
            print(cli.config_text(cfg), end="")
            return 0
        if args.plan:
            from pipelines.plan import plan_text

            print(plan_text(cfg), end="")
            return 0
        check_gpus(cfg, ray_joined=False)  # before the lake or the MLflow store is created
        from catalog.lake import Lake
        from catalog.tracking import Tracker
        from pipelines.common import Context
        from pipelines.evaluate import preflight as evaluate_preflight
        from pipelines.ingest import preflight

        lake = Lake(cfg.lake)
        tracker = Tracker(cfg.tracking, cfg.lake)
        ctx = Context(cfg, lake, tracker)
        preflight(ctx)
        if "evaluate" in cfg.stages:
            evaluate_preflight(ctx)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a lake folder that cannot be created
        print(f"config error: lake {cfg.lake!r}: {e}", file=sys.stderr)
        return 2
    import ray

    from catalog.lake import LakeError
    from catalog.lake_lock import lake_lock
    from pipelines.common import init_ray
    from pipelines.dag import BY_NAME

    try:
        with lake_lock(lake) as run_id:  # taken before Ray starts: an unwritable or busy lake fails here
            log.info("lake %s held by run %s", cfg.lake, run_id)
            init_ray(cfg.ray)
            try:
                check_gpus(cfg, ray_joined=True)
            except ConfigError as e:
                print(f"config error: {e}", file=sys.stderr)
                return 2
            t0 = time.time()
            results = {}
            with tracker.pipeline(name, to_dict(cfg), config_yaml(cfg)) as parent:
                for stage in cfg.stages:
                    results[stage] = BY_NAME[stage].run(ctx)
                if "evaluate" in cfg.stages:
                    from pipelines.evaluate import log_results

                    log_results(ctx, parent)
                parent.log_metrics({"seconds": time.time() - t0})
    except LakeError as e:
        print(f"lake error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not (e.filename or "").startswith(lake.base):
            raise
        print(f"lake error: {e}", file=sys.stderr)
        return 2
    # workers' output reaches the driver asynchronously: disconnect first so that the summary is last
    ray.shutdown()
    print_summary(ctx, results, time.time() - t0)
    return 0


def _brief(result: dict) -> str:
    """One summary line: status counts, or a training stage's steps, loss and registered model."""
    if "step" in result and "stage" in result:
        loss = f", loss {result['loss']:.4g}" if isinstance(result.get("loss"), float) else ""
        model = f", {result['model_uri']} (version {result['model_version']})" if result.get("model_uri") else ""
        return f"steps {result.get('start_step', 0)} -> {result['step']}{loss}{model}"
    return ", ".join(f"{k} {v}" for k, v in result.items())


def print_summary(ctx, results: dict, seconds: float) -> None:
    from catalog import layout
    from catalog.schemas import TABLES

    lake = ctx.lake
    print(f"\nSUPIR pipeline finished in {seconds:.1f} s")
    for stage, result in results.items():
        print(f"  {stage:14s} {_brief(result)}")
    print(f"\nLake tables:   {lake.uri('').rstrip('/')}  ({', '.join(t for t in TABLES if lake.exists(t))})")
    if ctx.tracker.enabled:
        print(f"MLflow store:  {ctx.tracker.uri}")
        print(f"  browse:      mlflow ui --backend-store-uri {ctx.tracker.uri}")
    table1 = Path(lake.path(layout.REPORTS)) / "evaluate" / "table1.md"
    if "evaluate" in results and lake.local and table1.exists():
        print(f"\nTable 1 ({table1}):\n")
        print(table1.read_text())
    lake_arg = "" if ctx.cfg.lake == "lake" else f" --lake {ctx.cfg.lake}"
    print(f"Try SQL:       python -m catalog.sql{lake_arg} \"SELECT status, count(*) AS n FROM images GROUP BY status\"")
    print(f"               python -m catalog.sql{lake_arg} --query drop_reasons")


if __name__ == "__main__":
    sys.exit(main())

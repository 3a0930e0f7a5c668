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

import dataclasses
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog.config import ConfigError, digest, to_dict
from catalog.lake import Lake, StageSpec, code_digest
from catalog.schemas import TABLES
from catalog.tracking import Tracker
from pipelines.common import Context, init_ray
from pipelines.config import config_yaml, load_config, parse_args
from pipelines.ablations import run_ablations
from pipelines.data import run_caption, run_degrade
from pipelines.evaluate import preflight as evaluate_preflight
from pipelines.evaluate import run_baselines, run_evaluate
from pipelines.ingest import preflight, run_crawl, run_filter
from pipelines.prior import TRAIN as PRIOR_TRAIN
from pipelines.prior import resolve_model_config, run_negatives, run_prior
from pipelines.restore import run_restore
from pipelines.train import final_folder, run_train, storage

log = logging.getLogger("supir")

TRAINED = "trained"  # restore.model value: the model that train_adaptor of this run produced


def _prior(ctx: Context) -> dict:
    """Stage 0 when model.prior is "train" (cached); later stages then see the trained prior's folder."""
    if ctx.cfg.model.prior == PRIOR_TRAIN:
        prior = run_prior(ctx)
        ctx.cfg = dataclasses.replace(ctx.cfg, model=resolve_model_config(ctx, prior))
    return {"prior": ctx.cfg.model.prior}


def _train(ctx: Context, stage: str) -> dict:
    """One training stage, skipped when its inputs, config and code are unchanged since it finished.

    A changed spec starts the stage's Ray Train run afresh; the same spec after a kill resumes it
    from its latest checkpoint (pipelines/train.py)."""

    _prior(ctx)
    lake, section = ctx.lake, ctx.cfg.train
    spec = StageSpec(f"train_{stage}", f"_stages/train_{stage}", {t: lake.digest(t) for t in ("pairs", "captions")},
                     digest({"train": section.stage(stage), "model": ctx.cfg.model, "name": section.name,
                             "split": ctx.cfg.split}),
                     code_digest("stages.train"))
    state = lake.begin(spec)
    if state == "cached":
        log.info("train_%s: cached (inputs, config and code unchanged)", stage)
        return lake.manifest(spec.table)["summary"]
    if state == "fresh":  # checkpoints of another spec must not be resumed
        run_dir = f"{storage(lake).rstrip('/')}/{section.name}-{stage}"
        if lake.fs.get_file_info(run_dir).type.name == "Directory":
            lake.fs.delete_dir(run_dir)
    summary = run_train(ctx, stage)
    lake.finish(spec, {"steps": int(summary.get("step", 0))}, {"summary": summary})
    return summary


def _restore_config(ctx: Context):
    _prior(ctx)
    cfg = ctx.cfg.restore
    if cfg.model == TRAINED:
        cfg = dataclasses.replace(cfg, model=final_folder(ctx.lake, ctx.cfg.train, "adaptor"))
    return cfg


def _restore(ctx: Context) -> dict:
    return run_restore(ctx, _restore_config(ctx))


STAGE_RUNNERS = {
    "crawl": run_crawl,
    "filter": run_filter,
    "caption": run_caption,
    "degrade": run_degrade,
    "prior": _prior,
    "negatives": lambda ctx: run_negatives(ctx, _prior(ctx)["prior"]),
    "train_encoder": lambda ctx: _train(ctx, "encoder"),
    "train_adaptor": lambda ctx: _train(ctx, "adaptor"),
    "restore": _restore,
    "ablations": lambda ctx: run_ablations(ctx, _restore_config(ctx)),
    "baselines": run_baselines,
    "evaluate": run_evaluate,
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
        if "evaluate" in cfg.stages:
            evaluate_preflight(ctx)
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
    table1 = Path(lake.path("reports")) / "evaluate" / "table1.md"
    if "evaluate" in results and lake.local and table1.exists():
        print(f"\nTable 1 ({table1}):\n")
        print(table1.read_text())
    lake_arg = "" if ctx.cfg.lake == "lake" else f" --lake {ctx.cfg.lake}"
    print(f"Try SQL:       python -m catalog.sql{lake_arg} \"SELECT status, count(*) AS n FROM images GROUP BY status\"")
    print(f"               python -m catalog.sql{lake_arg} --query drop_reasons")


if __name__ == "__main__":
    sys.exit(main())

"""The stages of the pipeline, written once: name, runner, the lake tables each reads and writes, its
config section, its code root (the module whose source is its cache key's code digest).
pipelines/cli.py (``STAGES``, the config's ``stages`` list), pipelines/full.py (what runs), the
pipelines' cache keys and pipelines/plan.py (what ``--plan`` reads) derive from :data:`STAGE_TABLE`.

To add a stage: a row here (in DAG order), its runner, its config section in pipelines/config.py
RunConfig (with a ``resources:`` field when it runs on Ray) and pipelines/cli.py SECTIONS, its Ray
resources in pipelines/plan.py ``resources``, and the name in cli.DAG's drawing; tests/test_dag.py
fails while one of these is missing.

Imports only the standard library at module level: ``--help`` must not wait for torch and Ray. Each
runner imports its pipeline module when it runs.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from catalog import layout

log = logging.getLogger("supir")

TRAINED = "trained"  # restore.model value: the model that train_adaptor of this run produced


@dataclass(frozen=True)
class Stage:
    """One stage of the DAG."""

    name: str
    """The name in the config's ``stages`` list, in MLflow's stage runs and in ``--plan``."""

    run: Callable[[Any], dict]
    """``run(ctx)`` (a pipelines/common.py Context) -> a summary dict; runs or serves the cached result."""

    section: str
    """The RunConfig section (pipelines/config.py) that configures the stage."""

    reads: tuple[str, ...]
    """Lake tables whose content is an input of the stage (their digests are in its cache key)."""

    writes: Optional[str]
    """The lake table (or folder) whose manifest records that the stage finished; None: the stage
    keeps no manifest of its own (prior: cached in <lake>/priors/; ablations: one partition of
    restorations per row, each with its own record)."""

    code: tuple[str, ...]
    """The stage's code roots: the modules whose source, with every project module they import, is
    the code part of the stage's cache key (:meth:`code_digest`; the pipeline and ``--plan`` both use it)."""

    def code_digest(self) -> str:
        """catalog.lake.code_digest of :attr:`code`: what the stage's manifest records as its code."""
        from catalog.lake import code_digest

        return code_digest(*self.code)


# ---------------------------------------------------------------------------------------------
# runners (each imports its pipeline when it runs)

def run_prior(ctx) -> dict:
    """Stage 0 when model.prior is "train" (cached); later stages then see the trained prior's folder."""
    from pipelines.prior import TRAIN as PRIOR_TRAIN
    from pipelines.prior import resolve_model_config, run_prior as train_prior

    if ctx.cfg.model.prior == PRIOR_TRAIN:
        prior = train_prior(ctx)
        ctx.cfg = dataclasses.replace(ctx.cfg, model=resolve_model_config(ctx, prior))
    return {"prior": ctx.cfg.model.prior}


def run_train(ctx, stage: str) -> dict:
    """One training stage, skipped when its inputs, config and code are unchanged since it finished.

    A changed spec starts the stage's Ray Train run afresh; the same spec after a kill resumes it
    from its latest checkpoint (pipelines/train.py)."""
    from catalog.config import digest
    from catalog.lake import StageSpec
    from pipelines.train import run_train as train, storage

    run_prior(ctx)
    lake, section = ctx.lake, ctx.cfg.train
    me = BY_NAME[f"train_{stage}"]
    spec = StageSpec(me.name, me.writes, {t: lake.digest(t) for t in me.reads},
                     digest({"train": section.stage(stage), "model": ctx.cfg.model, "name": section.name,
                             "split": ctx.cfg.split}),
                     me.code_digest())
    state = lake.begin(spec)
    if state == "cached":
        log.info("%s: cached (inputs, config and code unchanged)", me.name)
        return lake.manifest(spec.table)["summary"]
    if state == "fresh":  # checkpoints of another spec must not be resumed
        run_dir = f"{storage(lake).rstrip('/')}/{section.name}-{stage}"
        if lake.fs.get_file_info(run_dir).type.name == "Directory":
            lake.fs.delete_dir(run_dir)
    summary = train(ctx, stage)
    lake.finish(spec, {"steps": int(summary.get("step", 0))}, {"summary": summary})
    return summary


def restore_config(ctx):
    """ctx.cfg.restore, with ``model: trained`` read as this run's train_adaptor result."""
    from pipelines.train import final_folder

    run_prior(ctx)
    cfg = ctx.cfg.restore
    if cfg.model == TRAINED:
        cfg = dataclasses.replace(cfg, model=final_folder(ctx.lake, ctx.cfg.train, "adaptor"))
    return cfg


def _crawl(ctx) -> dict:
    from pipelines.ingest import run_crawl

    return run_crawl(ctx)


def _filter(ctx) -> dict:
    from pipelines.ingest import run_filter

    return run_filter(ctx)


def _caption(ctx) -> dict:
    from pipelines.data import run_caption

    return run_caption(ctx)


def _degrade(ctx) -> dict:
    from pipelines.data import run_degrade

    return run_degrade(ctx)


def _negatives(ctx) -> dict:
    from pipelines.prior import run_negatives

    return run_negatives(ctx, run_prior(ctx)["prior"])


def _restore(ctx) -> dict:
    from pipelines.restore import run_restore

    return run_restore(ctx, restore_config(ctx))


def _ablations(ctx) -> dict:
    from pipelines.ablations import run_ablations

    return run_ablations(ctx, restore_config(ctx))


def _baselines(ctx) -> dict:
    from pipelines.evaluate import run_baselines

    return run_baselines(ctx)


def _evaluate(ctx) -> dict:
    from pipelines.evaluate import run_evaluate

    return run_evaluate(ctx)


# ---------------------------------------------------------------------------------------------
# the table, in DAG order

STAGE_TABLE: tuple[Stage, ...] = (
    Stage("crawl", _crawl, "crawl", (layout.SOURCES,), layout.IMAGES, ("stages.crawl",)),
    Stage("filter", _filter, "filter", (layout.IMAGES,), layout.FILTERED, ("stages.filter",)),
    Stage("caption", _caption, "caption", (layout.FILTERED, layout.IMAGES), layout.CAPTIONS, ("stages.caption",)),
    Stage("degrade", _degrade, "degrade", (layout.FILTERED, layout.IMAGES), layout.DEGRADED, ("stages.degrade",)),
    Stage("prior", run_prior, "prior_train", (layout.FILTERED, layout.IMAGES, layout.CAPTIONS), None,
          ("stages.prior_train",)),
    Stage("negatives", _negatives, "negatives", (layout.FILTERED, layout.IMAGES, layout.DEGRADED), layout.NEGATIVES,
          ("stages.negatives",)),
    Stage("train_encoder", lambda ctx: run_train(ctx, "encoder"), "train", (layout.PAIRS, layout.CAPTIONS),
          layout.stage_record("train_encoder"), ("stages.train",)),
    Stage("train_adaptor", lambda ctx: run_train(ctx, "adaptor"), "train", (layout.PAIRS, layout.CAPTIONS),
          layout.stage_record("train_adaptor"), ("stages.train",)),
    Stage("restore", _restore, "restore", (layout.PAIRS,), layout.RESTORATIONS, ("stages.restore",)),
    Stage("ablations", _ablations, "ablations", (layout.PAIRS,), None, ("stages.ablations",)),
    Stage("baselines", _baselines, "baselines", (layout.PAIRS,), layout.BASELINES, ("evaluation.baselines",)),
    Stage("evaluate", _evaluate, "evaluate", (layout.PAIRS, layout.RESTORATIONS, layout.BASELINES), layout.METRICS,
          ("stages.evaluate",)),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGE_TABLE}

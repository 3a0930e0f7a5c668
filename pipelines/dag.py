"""The stages of the pipeline, written once: name, runner, the lake tables each reads and writes, its
config section, its code root (the module whose source is its cache key's code digest).
pipelines/cli.py (``STAGES``, the config's ``stages`` list), pipelines/full.py (what runs), the
pipelines' cache keys and pipelines/plan.py (what ``--plan`` reads) derive from :data:`STAGE_TABLE`.

To add a stage: a row here (in DAG order), its runner, its config section in pipelines/config.py
RunConfig and pipelines/cli.py SECTIONS, its Ray resources in pipelines/plan.py ``resources``, and the
name in cli.DAG's drawing; tests/pipelines/test_dag.py fails while one of these is missing.

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


def train_record(stage: str, name: str) -> str:
    """The lake folder whose manifest records that training stage ``stage`` ("encoder"/"adaptor") of
    the run named ``name`` (train.name) finished: ``_stages/train_<stage>/<name>``. One record per
    run name, like the run's own folder <lake>/train/<name>-<stage>/, so that training another name
    in the same lake (another seed, another experiment) never replaces this run's record."""
    return layout.partition(BY_NAME[f"train_{stage}"].writes, name)


def train_config_digest(cfg, stage: str) -> str:
    """The config part of a training stage's cache key (``cfg``: the run's config)."""
    from catalog.config import digest

    section = cfg.train
    return digest({"train": section.stage(stage), "model": cfg.model, "name": section.name,
                   "split": getattr(cfg, "split", None)})


def run_train(ctx, stage: str) -> dict:
    """One training stage, skipped when its inputs, config and code are unchanged since it finished.

    A changed spec starts the stage's Ray Train run afresh; the same spec after a kill resumes it
    from its latest checkpoint (pipelines/train.py). Records are kept per run name (:func:`train_record`)."""
    from catalog.lake import StageSpec
    from catalog.registry import is_model_uri
    from pipelines.common import model_identity
    from pipelines.train import resolve_init_from, run_train as train, storage

    run_prior(ctx)
    lake, section = ctx.lake, ctx.cfg.train
    me = BY_NAME[f"train_{stage}"]
    inputs = {t: lake.digest(t) for t in me.reads}
    # the model it starts from (stage 2: stage 1's E_dr) is an input: a retrained E_dr retrains stage 2
    cfg = section.stage(stage)
    init_from = cfg.init_from if is_model_uri(cfg.init_from or "") else resolve_init_from(lake, section, cfg)
    if init_from:
        inputs["init_from"] = model_identity(init_from, getattr(ctx.tracker, "uri", None))
    spec = StageSpec(me.name, train_record(stage, section.name), inputs,
                     train_config_digest(ctx.cfg, stage), me.code_digest())
    drop_old_layout_record(lake, me.writes)
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


def drop_old_layout_record(lake, folder: str) -> None:
    """Lakes written before records were kept per run name hold one record per training stage in
    ``folder`` (``_stages/train_<stage>/``) itself. It is not read: its code digest predates the
    per-rank share plan (stages/train_shards.py, in the key since), so it could never be a cache hit
    or resume. Each run name retrains once, into its own record; the old record's two JSON files are
    removed, with a warning, so that it is not mistaken for a current one (the models under
    <lake>/train/ and the MLflow runs stay)."""
    for name in ("_manifest.json", "_started.json"):
        path = f"{lake.path(folder)}/{name}"
        if lake.fs.get_file_info(path).type.name == "File":
            log.warning("%s: a training record of the old layout (one per stage, not per train.name); "
                        "it is removed and each run name trains once afresh into %s/<name>/", path, folder)
            lake.fs.delete_file(path)


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
          layout.stage_record("train_encoder"), ("stages.train", "stages.train_shards")),
    Stage("train_adaptor", lambda ctx: run_train(ctx, "adaptor"), "train", (layout.PAIRS, layout.CAPTIONS),
          layout.stage_record("train_adaptor"), ("stages.train", "stages.train_shards")),
    Stage("restore", _restore, "restore", (layout.PAIRS,), layout.RESTORATIONS, ("stages.restore",)),
    Stage("ablations", _ablations, "ablations", (layout.PAIRS,), None, ("stages.ablations",)),
    Stage("baselines", _baselines, "baselines", (layout.PAIRS,), layout.BASELINES, ("evaluation.baselines",)),
    Stage("evaluate", _evaluate, "evaluate", (layout.PAIRS, layout.RESTORATIONS, layout.BASELINES), layout.METRICS,
          ("stages.evaluate",)),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGE_TABLE}

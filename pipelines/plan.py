"""``--plan``: what a run would do, read from the config and the lake, without running anything.

For each configured stage, in DAG order: the Ray resources pipelines/ would ask for, and what the
lake already holds for it (a finished manifest, a started-but-unfinished run that would resume,
or nothing). Whether a finished stage is a cache hit depends on its inputs, config and code;
where the plan can tell that the config or the code changed since, it says so. Reads the lake's
manifests only: no Ray, no MLflow, no model is loaded, nothing is written.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from catalog import layout
from pipelines.cli import DAG
from pipelines.dag import BY_NAME


def _gpu(n: float) -> str:
    return f" + {n:g} GPU" if n else ""


def _pool(r: Any, actor: str, gpu: bool = True) -> str:
    """``resources`` (catalog/resources.py) as --plan prints them: workers x per-worker CPU and GPU."""
    return f"{r.workers} {actor} x {r.cpus_per_worker:g} CPU{_gpu(r.gpus_per_worker if gpu else 0)}"


def resources(cfg: Any, stage: str) -> str:
    """The Ray resources pipelines/ request for ``stage`` under ``cfg`` (a RunConfig): each section's
    ``resources`` (GPUs only when the cluster has them)."""
    if stage == "crawl":
        c = cfg.crawl
        return f"{_pool(c.resources, 'Fetcher actors', gpu=False)}, {c.threads} download threads each"
    if stage == "filter":
        c = cfg.filter
        return _pool(c.resources, "Filterer actors", gpu=bool(c.iqa))
    if stage == "caption":
        c = cfg.caption
        model = c.model if c.captioner == "llava" else "alt text"
        return (f"{_pool(c.resources, 'Captioner actors', gpu=c.captioner == 'llava')} "
                f"({model}, batch {c.batch_size}, {c.device})")
    if stage == "degrade":
        return f"{_pool(cfg.degrade.resources, 'Degrader actors', gpu=False)} (batch {cfg.degrade.batch_size})"
    if stage == "prior":
        if cfg.model.prior == "train":
            return f"{_pool(cfg.prior_train.resources, 'Ray task')}: stage 0 trains the {cfg.model.preset} prior"
        return f"none: loads the prior {cfg.model.prior}"
    if stage == "negatives":
        c = cfg.negatives
        return f"{_pool(c.resources, 'Negatives actors')} ({c.device}, {c.num_steps} steps)"
    if stage.startswith("train_"):
        t = cfg.train.stage(stage.removeprefix("train_"))
        return (f"{_pool(t.resources, 'Ray Train workers')} ({t.strategy}, "
                f"batch {t.batch_size}/worker, {t.steps} steps, {t.crop_size} px)")
    if stage == "restore":
        c = cfg.restore
        return f"{_pool(c.resources, 'Restorer actors')} ({c.device}, model {c.model})"
    if stage == "ablations":
        c, r = cfg.ablations, cfg.restore
        seeds = f", seeds {c.seeds}" if c.seeds else ""
        return f"{_pool(r.resources, 'Restorer actors')} per row ({', '.join(c.methods)}{seeds}; {c.split} pairs)"
    if stage == "baselines":
        c = cfg.baselines
        gpu = " when the cluster has GPUs" if c.resources.gpus_per_worker else ""
        return f"{_pool(c.resources, 'Baseliner actors')}{gpu}"
    if stage == "evaluate":
        c = cfg.evaluate
        return f"{_pool(c.resources, 'Evaluator actors')} ({', '.join(c.metrics)})"
    raise KeyError(stage)


def _config_digest(cfg: Any, lake_root: str, stage: str) -> str | None:
    """The config digest a stage writes into its spec, computed as the stage computes it (reading the
    lake where the stage does: the split for evaluate, stage 0's prior folder for training); None
    where the plan cannot tell without running something."""
    from types import SimpleNamespace

    from catalog.config import digest

    if stage in ("crawl", "filter", "degrade", "baselines"):
        return digest(getattr(cfg, stage))
    if stage not in ("evaluate", "train_encoder", "train_adaptor"):
        return None  # caption, negatives and restore digest a section resolved at run time
    import pyarrow.fs as pafs

    from catalog import layout
    from catalog.lake import MARK, Lake, filesystem

    fs, base = filesystem(lake_root)
    if fs.get_file_info(f"{base.rstrip('/')}/{MARK}").type != pafs.FileType.File:
        return None  # not a lake yet: opening one would write its mark, and --plan writes nothing
    ctx = SimpleNamespace(cfg=cfg, lake=Lake(lake_root))
    if stage == "evaluate":
        from pipelines.evaluate import evaluate_config_digest, pair_split

        return evaluate_config_digest(cfg.evaluate, pair_split(ctx))
    from pipelines.dag import train_config_digest
    from pipelines.prior import TRAIN, prior_folder, resolve_model_config

    if cfg.model.prior == TRAIN:  # training keys on the prior stage 0 trains, as run_prior resolves it
        if not ctx.lake.exists(layout.FILTERED):
            return None
        ctx.cfg = dataclasses.replace(cfg, model=resolve_model_config(ctx, str(prior_folder(ctx))))
    return train_config_digest(ctx.cfg, stage.removeprefix("train_"))


def cache_state(cfg: Any, lake_root: str, stage: str) -> str:
    """What the lake at ``lake_root`` holds for ``stage``, read from its manifests."""
    import pyarrow.fs as pafs

    from catalog.lake import filesystem

    table = BY_NAME[stage].writes  # the table whose manifest records that the stage finished
    if stage.startswith("train_"):  # one record per run name
        from pipelines.dag import train_record

        table = train_record(stage.removeprefix("train_"), cfg.train.name)
    if stage == "ablations":
        return ("one restoration run per method and seed (counted under restore); each reruns when its model "
                "files, inputs, config or code changed")
    if table is None:
        return "run at start of the stages that need it (cached in <lake>/priors/ by data, config and code)"
    fs, base = filesystem(lake_root)

    def read(name: str) -> dict | None:
        path = f"{base.rstrip('/')}/{table}/{name}"
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())

    manifest = read("_manifest.json")
    if manifest is None and table == layout.RESTORATIONS:  # one partition per run id: restorations/<run_id>/
        done = [name for name in _partitions(fs, f"{base.rstrip('/')}/{table}") if read(f"{name}/_manifest.json")]
        if done:
            return (f"{len(done)} restoration run(s) done ({', '.join(sorted(done)[:4])}{', ...' if len(done) > 4 else ''}); "
                    "a run whose config or model path changed gets a new run id and runs; one whose model files, "
                    "inputs or code changed reruns in place")
    if manifest is None:
        return "started, will resume from its finished parts" if read("_started.json") else "not run: runs"
    spec = manifest.get("spec", {})
    done = f"done ({manifest.get('rows', '?')} rows, {str(manifest.get('completed_at', ''))[:19]})"
    want = _config_digest(cfg, lake_root, stage)
    if want is not None and spec.get("config") != want:
        return done + "; config changed since: reruns"
    # the stage table's code root, as the pipeline digests it (evaluate appends ":pyiqa-<version>:<weights>")
    if str(spec.get("code", "")).split(":", 1)[0] != BY_NAME[stage].code_digest():
        return done + "; code changed since: reruns"
    return done + "; cached unless its inputs changed"


def _partitions(fs: Any, folder: str) -> list[str]:
    """Names of the sub-folders of ``folder`` (none when it does not exist)."""
    import pyarrow.fs as pafs

    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    return [i.base_name for i in fs.get_file_info(pafs.FileSelector(folder)) if i.type == pafs.FileType.Directory]


def plan_text(cfg: Any) -> str:
    """The plan of a run of ``cfg`` (a RunConfig) as text."""
    import os

    lines = ["DAG:", DAG, "", f"lake: {cfg.lake}"]
    local = "://" not in cfg.lake or cfg.lake.startswith("file://")
    exists = (not local) or os.path.isdir(cfg.lake.removeprefix("file://"))
    if not exists:
        lines.append("  (does not exist yet: every stage runs)")
    if getattr(cfg, "require_gpus", False):
        lines.append("require_gpus: true (refuses to start on a Ray cluster without GPUs)")
    lines += ["", f"stages ({len(cfg.stages)}):"]
    for stage in cfg.stages:
        lines.append(f"  {stage}")
        lines.append(f"    resources: {resources(cfg, stage)}")
        lines.append(f"    lake:      {cache_state(cfg, cfg.lake, stage) if exists else 'not run: runs'}")
    return "\n".join(lines) + "\n"

"""What every pipeline shares: Ray start-up, the lake writer, and the cached/resumable stage runner.

This is the only layer that knows Ray. A stage is a Ray-free callable class (stages/); here it
becomes ``map_batches`` over an actor pool whose output is written straight to the lake by a
second, task-based ``map_batches`` (one atomic Parquet part per block), which returns only a
small ``(status, n)`` summary to the driver. A stage killed half way keeps its finished parts;
the rerun processes only input rows whose key is missing from the output.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from catalog import layout
from catalog.captions import fill_missing
from catalog.config import digest, to_dict
from catalog.lake import Lake, StageSpec
from catalog.tracking import RunRef, Tracker

log = logging.getLogger("supir")

# Ray remote options of every Ray Data actor pool of this driver (init_ray sets them from the
# ray: section; empty means Ray Data's defaults)
ACTOR_OPTIONS: dict[str, Any] = {}


@dataclass
class Context:
    """One pipeline invocation: its config, lake and tracker."""

    cfg: Any  # RunConfig
    lake: Lake
    tracker: Tracker


def data_split(ctx: Context) -> dict[str, str]:
    """image_id -> "train" / "heldout" for the kept images of `filtered` (stages/split.py), by the
    run's ``split`` section (a config without one holds out with SplitConfig's defaults)."""
    from stages.split import SplitConfig, assign_split

    t = ctx.lake.read(layout.FILTERED, columns=["image_id", "keep"])
    kept = t.filter(pc.equal(t.column("keep"), True)).column("image_id").to_pylist()
    return assign_split(kept, getattr(ctx.cfg, "split", None) or SplitConfig())


def train_image_ids(ctx: Context) -> list[str]:
    """The kept images that training stages (0, 1, 2 and the negatives) may read."""
    from stages.split import train_ids

    return train_ids(data_split(ctx))


def gpus_if_available(num_gpus: float) -> float:
    """``num_gpus`` when the Ray cluster has GPUs, else 0 (a CPU-only cluster still runs the stage)."""
    import ray

    return num_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0


def actor_pool(resources, gpu: bool = True) -> dict[str, Any]:
    """``map_batches`` options of a stage's actor pool from its ``resources`` section (catalog/resources.py):
    up to ``workers`` actors of ``cpus_per_worker`` CPUs and, when ``gpu`` and the cluster has GPUs,
    ``gpus_per_worker`` GPUs each. ``gpu=False``: the stage's work needs none (the alt-text
    captioner, a filter without IQA gates)."""
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(min_size=1, max_size=resources.workers),
            "num_gpus": gpus_if_available(resources.gpus_per_worker) if gpu else 0,
            "num_cpus": resources.cpus_per_worker, **ACTOR_OPTIONS}


def init_ray(ray_cfg, **local_options: Any) -> None:
    """Join the cluster of a `ray job submit` (RAY_ADDRESS), a given address, or start a local one
    (``local_options``: more ray.init arguments for that one, e.g. the tests' include_dashboard=False).
    Already connected (ray.is_initialized()): that cluster is used as it is.

    Logs stay readable (pipelines/logs.py): Ray Data's INFO lines go to Ray's log files only, and
    progress bars show only when wanted (``ray.progress_bars``, by default when on a terminal)."""
    import ray
    from ray.data import DataContext

    from pipelines import logs

    progress = logs.progress_wanted(ray_cfg.progress_bars)
    if not ray.is_initialized():
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        kwargs: dict[str, Any] = {"log_to_driver": True}
        env_vars = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"), **logs.quiet_progress(progress)}
        quiet = {"env_vars": env_vars, "worker_process_setup_hook": logs.WORKER_HOOK}
        if os.environ.get("RAY_ADDRESS"):
            # a `ray job submit` driver: the job's runtime env (--working-dir) already ships the code
            pass
        elif ray_cfg.address:
            # an existing cluster reached from a checkout: ship the code with the job
            kwargs["address"] = ray_cfg.address
            kwargs["runtime_env"] = {"working_dir": root, **quiet,
                                     "excludes": [".venv*", "lake", ".git", "*.parquet", "mlruns"]}
        else:
            # a new local cluster started here (never another session's), whose workers import this checkout
            kwargs["address"] = "local"
            kwargs["num_cpus"] = ray_cfg.num_cpus
            env_vars["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
            kwargs["runtime_env"] = quiet
            kwargs.update(local_options)
        ray.init(**kwargs)
    logs.quiet_ray_data()
    logs.filter_worker_output()
    ACTOR_OPTIONS.clear()
    if ray_cfg.actor_max_restarts != -1:
        # Ray 2.60 takes max_restarts only as an extra remote arg, which it marks deprecated (removal
        # announced for 2.64); the warning would print once per stage
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", module=r"pipelines\.")
        ACTOR_OPTIONS["max_restarts"] = ray_cfg.actor_max_restarts
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = False  # one display per stage: the dataset's total


class LakeWriter:
    """Task-based sink: writes each block as one atomic part, returns a status summary."""

    def __init__(self, lake_root: str, table: str, status_column: str = "status"):
        self.lake_root = lake_root
        self.table = table
        self.status_column = status_column

    def __call__(self, block: pa.Table) -> pa.Table:
        lake = Lake(self.lake_root)
        lake.write_part(self.table, block)
        col = block.column(self.status_column).cast(pa.string()).fill_null("null")
        vc = pc.value_counts(col).to_pylist()
        return pa.table({"status": [str(v["values"]) for v in vc], "n": [int(v["counts"]) for v in vc]})


class StageActor:
    """Holds one stage instance per Ray actor.

    Ray Data wraps every method of a callable class to run on one thread; a stage whose
    ``__call__`` calls its own methods from worker threads (a fetcher's thread pool) would then
    wait on itself. Holding the stage inside a plain attribute keeps its methods unwrapped.
    """

    def __init__(self, cls: type, section: Any):
        self.stage = cls(section)

    def __call__(self, batch):
        return self.stage(batch)


class ReadPending:
    """Task-based reader: one lake part in, its rows matching ``where`` and ``allow`` and not yet done out.

    Reading part by part (one Ray block per part) keeps the part the unit of work end to end:
    an upstream part becomes one stage task and one output part, which is what resume skips.
    """

    def __init__(self, lake_root: str, columns: Optional[list[str]], key: str, done: list,
                 where: Optional[tuple[str, str]] = None, allow: Optional[list] = None,
                 fill: Optional[tuple[str, str, dict]] = None):
        self.lake_root, self.columns, self.key = lake_root, columns, key
        self.done, self.where, self.allow, self.fill = done, where, allow, fill

    def __call__(self, batch: dict) -> pa.Table:
        import pyarrow.parquet as pq

        lake = Lake(self.lake_root)
        tables = [pq.read_table(p, columns=self.columns, filesystem=lake.fs) for p in batch["path"]]
        block = pa.concat_tables(tables, promote_options="default")
        mask = None
        if self.where is not None:
            col, value = self.where
            mask = pc.equal(block.column(col), value)
        if self.allow is not None:
            ok = pc.is_in(block.column(self.key), value_set=pa.array(self.allow, type=block.schema.field(self.key).type))
            mask = ok if mask is None else pc.and_(mask, ok)
        if self.done:
            fresh = pc.invert(pc.is_in(block.column(self.key), value_set=pa.array(self.done, type=block.schema.field(self.key).type)))
            mask = fresh if mask is None else pc.and_(mask, fresh)
        block = block if mask is None else block.filter(mask)
        if self.fill is not None:  # e.g. each pair's caption from the `captions` table, where the row has none
            block = fill_missing(block, *self.fill)
        return block


def folder_digest(path: str) -> str:
    """Identity of a model folder's current files, for a stage's cache key: each file's relative
    path, size and modification time (local paths or filesystem URIs such as s3://). A model
    retrained into the same folder (same train.name, another config) has new files and so another
    digest; the stages that load it then rerun instead of keeping restorations of the old one.
    Metadata only, so a multi-GB SDXL checkpoint costs a directory listing, not a read."""
    import hashlib

    import pyarrow.fs as pafs

    from catalog.lake import filesystem

    fs, base = filesystem(str(path))
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no model folder or file {path!r}")
    files = [info] if info.type == pafs.FileType.File else [
        f for f in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if f.type == pafs.FileType.File]
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        rel = os.path.relpath(f.path, base) if f.path != base else os.path.basename(base)
        h.update(f"{rel}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def model_identity(model: str, tracking_uri: Optional[str] = None) -> str:
    """Cache-key identity of a model a stage loads: a folder's files (:func:`folder_digest`); for
    ``models:/<name>@<alias>`` the version the alias points at now (moving the alias reruns the
    stage), for ``models:/<name>/<version>`` and ``runs:/`` URIs the URI itself (immutable)."""
    from catalog.registry import is_model_uri, model_version_source

    if not is_model_uri(model):
        return folder_digest(model)
    return digest(model_version_source(model, tracking_uri) if model.startswith("models:/") else model)[:16]


def run_stage(
    ctx: Context,
    *,
    stage: str,
    table: str,
    inputs: list[str],
    section: Any,
    code: str,
    input_table: str,
    key: str,
    fn: type,
    batch_size: int,
    resources: Any,
    gpu: bool = True,
    batch_format: str = "numpy",
    columns: Optional[list[str]] = None,
    where: Optional[tuple[str, str]] = None,
    allow: Optional[list] = None,
    status_column: str = "status",
    finalize: Optional[Callable[[RunRef], None]] = None,
    counts: Optional[Callable[[], dict[str, int]]] = None,
    fill: Optional[tuple[str, str, dict]] = None,
    models: Optional[dict[str, str]] = None,
) -> dict[str, int]:
    """Run one map stage: cached when nothing changed, resumed when killed, else fresh.

    ``fn(section)`` is the stage's callable class; it maps batches of ``batch_size`` ``input_table`` rows
    (``columns``, filtered by ``where`` and by ``allow``, a list of accepted keys) to rows of
    ``table``; ``key`` identifies an input row in the output (for resume). ``finalize`` runs global passes once all rows are written.
    ``fill`` = (column, by, values) fills an input row's missing ``column`` with ``values[row[by]]``.
    ``resources`` (the section's ``resources:``) and ``gpu`` size the actor pool (:func:`actor_pool`).
    ``models`` = {name: folder or models:/ URI} are the models the stage loads: they are inputs of its
    cache key like the tables (:func:`model_identity`), so retraining a model into the same folder reruns it.
    """
    import ray

    lake = ctx.lake
    spec_inputs = {t: lake.digest(t) for t in inputs}
    if allow is not None:  # which rows may pass is an input too (the held-out split changes it)
        spec_inputs["allow"] = digest(sorted(map(str, allow)))
    for name, model in (models or {}).items():
        spec_inputs[name] = model_identity(model, ctx.tracker.uri)
    spec = StageSpec(stage, table, spec_inputs, digest(section), code)
    state = lake.begin(spec)
    count = counts or (lambda: lake.status_counts(table, status_column))
    with ctx.tracker.stage(stage, params=to_dict(section), state=state) as run:
        t0 = time.time()
        processed = 0
        if state == "cached":
            log.info("%s: cached (inputs, config and code unchanged)", stage)
            c = lake.manifest(table)["counts"]
            run.log_metrics({f"status.{k}": v for k, v in c.items()} | {"rows": sum(c.values()), "cached": 1})
            return c
        run.log_inputs({t: (lake.uri(t), spec.inputs[t]) for t in inputs})
        done = sorted(lake.done_keys(table, key)) if state == "resume" else []
        if done:
            log.info("%s: resuming, %d input rows already done", stage, len(done))
        files = lake.files(input_table)
        if files:
            # light tasks get a fraction of a CPU so that they never wait behind the stage's actors
            ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
            ds = ds.map_batches(ReadPending(lake.root, columns, key, done, where, allow, fill), batch_size=1, num_cpus=0.1)
            ds = ds.map_batches(
                StageActor,
                fn_constructor_args=(fn, section),
                batch_size=batch_size,
                batch_format=batch_format,
                **actor_pool(resources, gpu),
            )
            # one part per stage batch: the unit a killed run does not redo
            ds = ds.map_batches(LakeWriter(lake.root, table, status_column), batch_format="pyarrow",
                                batch_size=batch_size, num_cpus=0.1)
            for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                processed += int(pc.sum(b.column("n")).as_py() or 0)
        if finalize is not None:
            finalize(run)
        seconds = time.time() - t0
        c = count()
        lake.finish(spec, c, {"seconds": seconds, "processed": processed, "state": state})
        run.log_metrics(
            {f"status.{k}": v for k, v in c.items()}
            | {"rows": sum(c.values()), "processed": processed, "rows_per_s": processed / max(seconds, 1e-9), "cached": 0}
        )
        log.info("%s: %d rows processed in %.1f s -> %s", stage, processed, seconds, c)
        return c

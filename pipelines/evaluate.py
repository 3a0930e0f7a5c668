"""Evaluation stage group: pairs -> baselines, and (restorations + baselines, pairs) -> metrics.

    python pipelines/evaluate.py --config configs/demo.yaml [key.path=value ...]   # --help, --plan, --print-config

    baselines  Baseliner actors (bicubic, Real-ESRGAN x4plus) on the ok degraded pairs -> `baselines`
    evaluate   every ok row of `restorations` and `baselines` beside its pair's HQ -> Evaluator
               actors (pyiqa) -> `metrics` (long format); then aggregates per method, degradation
               and metric to MLflow, and the report (Table 1 as Markdown/Parquet/PNG, a sample grid)

Baselines have their own table: the restore stage owns `restorations` (run_stage's Lake.begin
clears a table whose spec changed, so two stages must not share one). The evaluate stage joins
without a shuffle: the driver reads only the key columns of its three inputs, plans work rows
(pair, method, run, the part files that hold its images) and a light task reads each batch's
images from those parts.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a script: the runner of full.py, limited to this group's stages
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before the imports below: `--help` stays fast
    from pipelines.full import main

    sys.exit(main(only=("baselines", "evaluate"), name="evaluate", description=__doc__.split("\n\n")[0]))

import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog import layout
from catalog.config import digest, to_dict
from catalog.lake import Lake, StageSpec
from catalog.tracking import RunRef
from evaluation.baselines import KIND, BaselineConfig, Baseliner, degradation_label
from evaluation.metrics import EvalConfig, check_metric_names, seed_weights
from evaluation.report import TABLE1_SQL, markdown_table, table1, write_report
from pipelines.common import Context, LakeWriter, StageActor, actor_pool, run_stage
from pipelines.dag import BY_NAME
from stages.split import HELDOUT
from stages.evaluate import Evaluator

log = logging.getLogger("supir")

SOURCES = (layout.RESTORATIONS, layout.BASELINES)  # tables whose ok rows are scored
WORK_KEY = ("pair_id", "method", "run_id")


def preflight(ctx: Context) -> None:
    """Checks that need libraries, before any stage runs: metric names known to pyiqa."""
    if "evaluate" in ctx.cfg.stages:
        check_metric_names(ctx.cfg.evaluate)


# ---------------------------------------------------------------------------------------------
# baselines

def run_baselines(ctx: Context, cfg: Optional[BaselineConfig] = None) -> dict[str, int]:
    """The `baselines` stage: bicubic and Real-ESRGAN on the ok degraded pairs (cached, resumable)."""
    cfg = cfg or ctx.cfg.baselines
    return run_stage(
        ctx,
        stage="baselines",
        table=layout.BASELINES,
        inputs=[layout.PAIRS],
        section=cfg,
        code=BY_NAME["baselines"].code_digest(),
        input_table=layout.PAIRS,
        key="pair_id",
        fn=Baseliner,
        batch_size=cfg.batch_size,
        resources=cfg.resources,
        columns=["pair_id", "lq", "hq", "scale", "kind", "status"],
        where=("status", "ok"),
    )


# ---------------------------------------------------------------------------------------------
# evaluate: planning the work without a shuffle

def _index(lake: Lake, table: str, columns: list[str]) -> pa.Table:
    """Key columns of every part of ``table`` plus ``_file``, the part that holds the row."""
    parts = []
    for f in lake.files(table):
        t = pq.read_table(f, columns=columns, filesystem=lake.fs)
        parts.append(t.append_column("_file", pa.array([f] * t.num_rows, pa.string())))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in columns + ["_file"]})
    return pa.concat_tables(parts, promote_options="default")


def plan_work(lake: Lake, split: Optional[dict[str, str]] = None) -> pa.Table:
    """One row per ok restoration (any source table) of an ok degraded pair: keys, degradation, the
    split of the pair's image (``split``: image_id -> split, stages/split.py; null when unknown), part files."""
    pairs = _index(lake, layout.PAIRS, ["pair_id", "image_id", "status", "kind", "params", "scale"])
    if pairs.num_rows:
        pairs = pairs.filter(pc.and_(pc.equal(pairs["status"], "ok"), pc.equal(pairs["kind"], KIND)))
    labels = [degradation_label(p, s) for p, s in zip(pairs["params"].to_pylist(), pairs["scale"].to_pylist())]
    splits = [(split or {}).get(i) for i in pairs["image_id"].to_pylist()]
    pairs = pa.table({"pair_id": pairs["pair_id"].cast(pa.string()), "degradation": pa.array(labels, pa.string()),
                      "split": pa.array(splits, pa.string()), "pairs_file": pairs["_file"].cast(pa.string())})
    work = []
    for table in SOURCES:
        idx = _index(lake, table, ["pair_id", "run_id", "method", "status"])
        if not idx.num_rows:
            continue
        idx = idx.filter(pc.equal(idx["status"], "ok"))
        work.append(pa.table({"pair_id": idx["pair_id"].cast(pa.string()), "run_id": idx["run_id"].cast(pa.string()),
                              "method": idx["method"].cast(pa.string()), "src_file": idx["_file"].cast(pa.string())}))
    empty = pa.schema([("pair_id", pa.string()), ("run_id", pa.string()), ("method", pa.string()),
                       ("src_file", pa.string()), ("degradation", pa.string()), ("split", pa.string()),
                       ("pairs_file", pa.string())])
    if not work:
        return empty.empty_table()
    joined = pa.concat_tables(work).join(pairs, keys="pair_id", join_type="inner")
    return joined.select(empty.names).sort_by([("src_file", "ascending"), ("pair_id", "ascending")])


def _key(t: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(*(t[c].cast(pa.string()) for c in WORK_KEY), "\x1f")


class GatherImages:
    """Task: work rows -> Evaluator input rows, reading each row's restored and HQ PNG from its part."""

    def __init__(self, lake_root: str):
        self.lake_root = lake_root

    def __call__(self, block: pa.Table) -> pa.Table:
        lake = Lake(self.lake_root)
        rows = block.to_pylist()
        restored: dict[tuple, bytes] = {}
        for f in sorted({r["src_file"] for r in rows}):
            ids = sorted({r["pair_id"] for r in rows if r["src_file"] == f})
            t = pq.read_table(f, columns=["pair_id", "run_id", "method", "restored"], filesystem=lake.fs,
                              filters=[("pair_id", "in", ids)])
            for r in t.to_pylist():
                restored[(r["pair_id"], r["method"], r["run_id"])] = r["restored"]
        hq: dict[str, bytes] = {}
        for f in sorted({r["pairs_file"] for r in rows}):
            ids = sorted({r["pair_id"] for r in rows if r["pairs_file"] == f})
            t = pq.read_table(f, columns=["pair_id", "hq"], filesystem=lake.fs, filters=[("pair_id", "in", ids)])
            hq.update(zip(t["pair_id"].to_pylist(), t["hq"].to_pylist()))
        return pa.table({
            "pair_id": [r["pair_id"] for r in rows],
            "method": [r["method"] for r in rows],
            "run_id": [r["run_id"] for r in rows],
            "degradation": [r["degradation"] for r in rows],
            "split": pa.array([r.get("split") for r in rows], pa.string()),
            "restored": pa.array([restored.get((r["pair_id"], r["method"], r["run_id"])) for r in rows], pa.binary()),
            "hq": pa.array([hq.get(r["pair_id"]) for r in rows], pa.binary()),
        })


def weights_digest(weights_dir: str) -> str:
    """Names and sizes of the weight files: adding weights makes the next run score again."""
    h = hashlib.sha256()
    root = Path(weights_dir)
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file() and "_sources" not in p.parts:
                h.update(f"{p.relative_to(root)}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# evaluate: the stage

def run_evaluate(ctx: Context, cfg: Optional[EvalConfig] = None) -> dict[str, int]:
    """The `evaluate` stage: `metrics` rows for every ok restoration and baseline, then the report."""
    import ray

    cfg = cfg or ctx.cfg.evaluate
    lake = ctx.lake
    if cfg.seed_offline:
        seeded = seed_weights(cfg.weights_dir, cfg.basicsr_sdist or None)
        log.info("evaluate: weights folder %s: %s", cfg.weights_dir, seeded)
    import pyiqa

    code = f"{BY_NAME['evaluate'].code_digest()}:pyiqa-{pyiqa.__version__}:{weights_digest(cfg.weights_dir)}"
    split = pair_split(ctx)
    spec = StageSpec("evaluate", layout.METRICS, {t: lake.digest(t) for t in (layout.PAIRS,) + SOURCES},
                     evaluate_config_digest(cfg, split), code)
    state = lake.begin(spec)
    with ctx.tracker.stage("evaluate", params=to_dict(cfg), state=state) as run:
        if state == "cached":
            log.info("evaluate: cached (inputs, config, code and weights unchanged)")
            c = lake.manifest(layout.METRICS)["counts"]
            run.log_metrics({f"status.{k}": v for k, v in c.items()} | {"rows": sum(c.values()), "cached": 1})
            return c
        t0 = time.time()
        work = plan_work(lake, split)
        if state == "resume" and lake.exists(layout.METRICS):
            done = lake.read(layout.METRICS, columns=list(WORK_KEY)).group_by(list(WORK_KEY)).aggregate([])
            if done.num_rows:
                work = work.filter(pc.invert(pc.is_in(_key(work), value_set=_key(done))))
                log.info("evaluate: resuming, %d restorations already scored", done.num_rows)
        processed = 0
        if work.num_rows:
            n_blocks = max(1, min(64, work.num_rows // cfg.rows_per_batch))
            step = -(-work.num_rows // n_blocks)
            ds = ray.data.from_arrow([work.slice(i, step) for i in range(0, work.num_rows, step)])
            # memory: a batch holds every row's HQ and restored PNGs decoded (about 400 MiB measured on
            # the demo); requesting it keeps Ray from packing readers into an OOM and from warning
            ds = ds.map_batches(GatherImages(lake.root), batch_format="pyarrow", batch_size=cfg.rows_per_batch,
                                num_cpus=0.1, memory=512 * 2**20)
            ds = ds.map_batches(StageActor, fn_constructor_args=(Evaluator, cfg), batch_size=cfg.rows_per_batch,
                                batch_format="numpy", **actor_pool(cfg.resources))
            ds = ds.map_batches(LakeWriter(lake.root, layout.METRICS), batch_format="pyarrow", batch_size=None,
                                num_cpus=0.1)
            for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                processed += int(pc.sum(b.column("n")).as_py() or 0)
        seconds = time.time() - t0
        summary = log_evaluation(ctx, cfg, run)
        c = lake.status_counts(layout.METRICS)
        lake.finish(spec, c, {"seconds": seconds, "processed": processed, "state": state,
                              "availability": summary["availability"]})
        run.log_metrics({f"status.{k}": v for k, v in c.items()}
                        | {"rows": sum(c.values()), "processed": processed, "cached": 0,
                           "rows_per_s": processed / max(seconds, 1e-9)})
        log.info("evaluate: %d metric rows in %.1f s -> %s", processed, seconds, c)
        return c


def evaluate_config_digest(cfg: EvalConfig, split: Optional[dict[str, str]]) -> str:
    """The config part of the evaluate stage's cache key: its section and the split it labels rows
    with (:func:`pair_split`)."""
    return digest({"evaluate": cfg, "split": split})


def pair_split(ctx: Context) -> Optional[dict[str, str]]:
    """image_id -> "train" / "heldout" of this run (stages/split.py); None without a `filtered` table."""
    if not ctx.lake.exists(layout.FILTERED):
        return None
    from pipelines.common import data_split

    return data_split(ctx)


def mlflow_aggregates(df) -> dict[str, float]:
    """``<metric>/<method>/<degradation>[/<split>]`` -> mean over pairs, for the cells that have a value
    (no split suffix for pairs of no known split)."""
    out = {}
    for r in df.itertuples():
        if r.status == "ok":
            suffix = "" if getattr(r, "split", "all") == "all" else f"/{r.split}"
            out[f"{r.metric}/{r.method}/{r.degradation}{suffix}"] = float(r.mean)
    return out


def log_results(ctx: Context, run: RunRef) -> int:
    """Table 1 on the pipeline's parent run (``<metric>/<method>/<degradation>`` means, the
    Markdown table, metric availability), so that two pipeline runs compare side by side in the
    UI's runs table and in ``mlflow.search_runs`` without opening their evaluate runs; also when
    evaluate was a cache hit. Returns the number of metrics logged."""
    lake = ctx.lake
    if not lake.exists(layout.METRICS):
        return 0
    df = table1(lake.files(layout.METRICS) if lake.local else lake.read(layout.METRICS))
    values = mlflow_aggregates(df)
    run.log_metrics(values)
    run.set_tags({f"metric_status.{m}": "ok" if (g["status"] == "ok").any() else g["status"].iloc[0]
                  for m, g in df.groupby("metric")})
    run.log_text(markdown_table(df, ctx.cfg.evaluate.metrics), "table1.md")
    return len(values)


def report_dir(ctx: Context) -> Path:
    """Where the report files go: <lake>/reports/evaluate for a local lake, else a temporary folder."""
    if ctx.lake.local:
        return Path(ctx.lake.base) / layout.REPORTS / "evaluate"
    return Path(tempfile.mkdtemp(prefix="supir-report-"))


def grid_rows(lake: Lake, n: int, split: Optional[dict[str, str]] = None) -> list[dict[str, bytes]]:
    """LQ, HQ and every method's restoration of the first ``n`` pairs scored by every method, held-out
    pairs first (``split``: image_id -> split)."""
    if n <= 0:
        return []
    work = plan_work(lake, split)
    if not work.num_rows:
        return []
    methods = set(work["method"].to_pylist())
    by_pair: dict[str, set] = {}
    for p, m in zip(work["pair_id"].to_pylist(), work["method"].to_pylist()):
        by_pair.setdefault(p, set()).add(m)
    held = {p for p, s in zip(work["pair_id"].to_pylist(), work["split"].to_pylist()) if s == HELDOUT}
    chosen = sorted((p for p, ms in by_pair.items() if ms == methods), key=lambda p: (p not in held, p))[:n]
    if not chosen:
        return []
    sel = work.filter(pc.is_in(work["pair_id"], value_set=pa.array(chosen, pa.string())))
    images = GatherImages(lake.root)(sel)
    rows = {p: {"pair_id": p} for p in chosen}
    for r in images.to_pylist():
        rows[r["pair_id"]][r["method"]] = r["restored"]
        rows[r["pair_id"]]["hq"] = r["hq"]
    pairs = lake.read(layout.PAIRS, columns=["pair_id", "lq"])
    pairs = pairs.filter(pc.is_in(pairs["pair_id"], value_set=pa.array(chosen, pa.string())))
    for p, lq in zip(pairs["pair_id"].to_pylist(), pairs["lq"].to_pylist()):
        rows[p]["lq"] = lq
    return [rows[p] for p in chosen]


def log_evaluation(ctx: Context, cfg: EvalConfig, run: RunRef) -> dict:
    """Aggregates, metric availability and the report: to MLflow and the report folder."""
    lake = ctx.lake
    df = table1(lake.files(layout.METRICS) if lake.local else lake.read(layout.METRICS))
    availability = {}
    for name in cfg.metrics:
        st = df.loc[df["metric"] == name, "status"]
        availability[name] = "ok" if (st == "ok").any() else (st.iloc[0] if len(st) else "no rows")
    run.log_metrics(mlflow_aggregates(df))
    # an unavailable metric is a tag and a JSON entry, never a 0 in the metric history
    run.set_tags({f"metric_status.{k}": v for k, v in availability.items()})
    run.log_dict(availability, "report/availability.json")
    out = report_dir(ctx)
    paths = write_report(out, df, grid_rows(lake, cfg.grid_rows, pair_split(ctx)), cfg.metrics)
    for p in paths.values():
        run.log_artifact(p, "report")
    if run.enabled:
        run.log_table(df, "report/table1.json")
    return {"availability": availability, "report": {k: str(v) for k, v in paths.items()}, "table1": df}


__all__ = ["preflight", "run_baselines", "run_evaluate", "plan_work", "GatherImages", "TABLE1_SQL", "BaselineConfig", "EvalConfig"]

"""Ingestion stage group: sources -> crawl -> images -> filter -> filtered.

    python pipelines/ingest.py --config configs/demo.yaml [key.path=value ...]   # --help, --plan, --print-config

    sources  normalised source rows (URL lists, folders, globs, HF datasets), one part per shard
    crawl    Fetcher actors (a thread pool each) -> `images`, then a global exact-duplicate pass
    filter   Filterer actors -> `filtered`, then a global perceptual-hash near-duplicate pass
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a script: the runner of full.py, limited to this group's stages
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before the imports below: `--help` stays fast
    from pipelines.full import main

    sys.exit(main(only=("crawl", "filter"), name="ingest", description=__doc__.split("\n\n")[0]))

import hashlib
import logging

import pyarrow as pa
import pyarrow.compute as pc

from catalog import layout
from catalog.lake import StageSpec
from pipelines.common import Context, run_stage
from pipelines.dag import BY_NAME
from stages.crawl import Fetcher, apply_duplicates, mark_duplicates, read_sources
from stages.crawl_sources import check_sources
from stages.filter import Filterer, check_iqa_available, near_duplicates

log = logging.getLogger("supir")


def write_sources(ctx: Context) -> int:
    """Normalise the configured sources into the `sources` table (rewritten only when they change)."""
    cfg, lake = ctx.cfg.crawl, ctx.lake
    table = read_sources(cfg)
    h = hashlib.sha256()
    for col in ("url", "alt_text", "source", "local"):  # "local" decides what may be read from disk
        h.update(repr(table.column(col).to_pylist()).encode())
    content = h.hexdigest()[:16]
    spec = StageSpec("sources", layout.SOURCES, {}, content + f":{cfg.shard_rows}", "")
    if lake.begin(spec) != "cached":
        for start in range(0, table.num_rows, cfg.shard_rows):  # one part per shard -> one Ray block each
            lake.write_part(layout.SOURCES, table.slice(start, cfg.shard_rows), name=f"part-{start // cfg.shard_rows:06d}")
        lake.finish(spec, {"rows": table.num_rows})
    return table.num_rows


def _dedupe_images(ctx: Context, run) -> None:
    """Mark exact duplicates (same image_id) after all shards are fetched: the first row stays."""
    lake = ctx.lake
    keys = lake.read(layout.IMAGES, columns=["row", "image_id", "status"])
    dups = mark_duplicates(keys)  # row -> row it duplicates
    if not dups:
        return

    def fix(part: pa.Table):
        if not any(r in dups for r in part.column("row").to_pylist()):
            return None
        return apply_duplicates(part, dups)

    n = lake.rewrite_parts(layout.IMAGES, fix)
    log.info("crawl: %d exact duplicates marked in %d parts", len(dups), n)


def run_crawl(ctx: Context) -> dict[str, int]:
    cfg = ctx.cfg.crawl
    write_sources(ctx)
    return run_stage(
        ctx,
        stage="crawl",
        table=layout.IMAGES,
        inputs=[layout.SOURCES],
        section=cfg,
        code=BY_NAME["crawl"].code_digest(),
        input_table=layout.SOURCES,
        key="row",
        fn=Fetcher,
        batch_size=cfg.shard_rows,
        batch_format="pyarrow",
        resources=cfg.resources,
        finalize=lambda run: _dedupe_images(ctx, run),
    )


def _near_dupes(ctx: Context, run) -> None:
    lake, cfg = ctx.lake, ctx.cfg.filter
    t = lake.read(layout.FILTERED, columns=["image_id", "keep", "phash", "width", "height", "sharpness"])
    kept = t.filter(pc.equal(t.column("keep"), True)).to_pylist()
    rank = [(-(r["width"] * r["height"]), -(r["sharpness"] or 0.0), r["image_id"]) for r in kept]
    dup = near_duplicates([r["image_id"] for r in kept], [r["phash"] for r in kept], rank, cfg.phash_distance)
    if not dup:
        return

    def fix(part: pa.Table):
        ids = part.column("image_id").to_pylist()
        if not any(i in dup for i in ids):
            return None
        keep = pa.array([False if i in dup else k for i, k in zip(ids, part.column("keep").to_pylist())])
        reason = pa.array([f"near_duplicate:{dup[i]}" if i in dup else r for i, r in zip(ids, part.column("reason").to_pylist())], pa.string())
        part = part.set_column(part.schema.get_field_index("keep"), "keep", keep)
        return part.set_column(part.schema.get_field_index("reason"), "reason", reason)

    lake.rewrite_parts(layout.FILTERED, fix)
    log.info("filter: %d near duplicates", len(dup))


def filter_counts(ctx: Context) -> dict[str, int]:
    """kept, plus one count per rejection reason (the part of the reason before ':')."""
    t = ctx.lake.read(layout.FILTERED, columns=["keep", "reason"])
    out: dict[str, int] = {}
    for keep, reason in zip(t.column("keep").to_pylist(), t.column("reason").to_pylist()):
        k = "kept" if keep else (reason or "rejected").split(":", 1)[0]
        out[k] = out.get(k, 0) + 1
    return out


def run_filter(ctx: Context) -> dict[str, int]:
    cfg = ctx.cfg.filter
    return run_stage(
        ctx,
        stage="filter",
        table=layout.FILTERED,
        inputs=[layout.IMAGES],
        section=cfg,
        code=BY_NAME["filter"].code_digest(),
        input_table=layout.IMAGES,
        key="image_id",
        columns=["image_id", "url", "bytes", "status"],
        where=("status", "ok"),
        fn=Filterer,
        batch_size=cfg.batch_size,
        resources=cfg.resources,
        gpu=bool(cfg.iqa),
        status_column="keep",
        finalize=lambda run: _near_dupes(ctx, run),
        counts=lambda: filter_counts(ctx),
    )


def preflight(ctx: Context) -> None:
    """Checks that need libraries or the disk (not just types), run before any stage (and Ray) starts."""
    if "crawl" in ctx.cfg.stages:
        check_sources(ctx.cfg.crawl)
    if "filter" in ctx.cfg.stages:
        check_iqa_available(ctx.cfg.filter)

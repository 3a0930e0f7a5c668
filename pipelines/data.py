"""Training-data stage group: filtered images -> captions, and filtered images -> degraded pairs.

    python pipelines/data.py --config configs/demo.yaml [key.path=value ...]   # --help, --plan, --print-config

    caption   Captioner actors (LLaVA, GPU when configured) or the alt-text captioner -> `captions`
    degrade   Degrader actors (Real-ESRGAN / BSRGAN, seeded per pair) -> `pairs/degraded`

Both read the kept rows of `filtered` joined with their bytes in `images`.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a script: the runner of full.py, limited to this group's stages
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before the imports below: `--help` stays fast
    from pipelines.full import main

    sys.exit(main(only=("caption", "degrade"), name="data", description=__doc__.split("\n\n")[0]))

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from catalog import layout
from pipelines.common import Context, run_stage
from pipelines.dag import BY_NAME
from stages.caption import CaptionConfig, captioner_class
from stages.degrade import Degrader, preview_grid, summarize_params

log = logging.getLogger("supir")

TINY_RANDOM = "tiny-random"  # caption.model value: a tiny random-init LLaVA built offline (demo, CI)


def kept_image_ids(ctx: Context) -> list[str]:
    t = ctx.lake.read(layout.FILTERED, columns=["image_id", "keep"])
    return t.filter(pc.equal(t.column("keep"), True)).column("image_id").to_pylist()


def resolve_captioner(ctx: Context) -> CaptionConfig:
    """The caption config with ``model: tiny-random`` replaced by a built, saved tiny LLaVA."""
    cfg = ctx.cfg.caption
    if cfg.captioner != "llava" or cfg.model != TINY_RANDOM:
        return cfg
    if not ctx.lake.local:
        raise ValueError("caption.model = 'tiny-random' needs a local lake folder to save the tiny model in")
    from model.tiny_llava import build_tiny_llava

    folder = Path(ctx.lake.path(layout.MODELS)) / f"tiny-llava-seed{cfg.seed}"
    if not (folder / "config.json").exists():
        build_tiny_llava(folder, size="tiny", seed=cfg.seed)
    return dataclasses.replace(cfg, model=str(folder))


def run_caption(ctx: Context) -> dict[str, int]:
    cfg = resolve_captioner(ctx)

    def finalize(run):
        t = ctx.lake.read(layout.CAPTIONS, columns=["image_id", "caption", "status", "seconds", "new_tokens"])
        ok = t.filter(pc.equal(t.column("status"), "ok"))
        secs = float(pc.sum(t.column("seconds")).as_py() or 0.0)
        tokens = int(pc.sum(t.column("new_tokens")).as_py() or 0)
        run.log_metrics({"images_per_s": t.num_rows / max(secs, 1e-9), "tokens_per_s": tokens / max(secs, 1e-9),
                         "mean_new_tokens": tokens / max(ok.num_rows, 1)})
        if ok.num_rows:
            run.log_table(ok.select(["image_id", "caption"]).slice(0, 50).to_pandas(), "example_captions.json")

    return run_stage(
        ctx,
        stage="caption",
        table=layout.CAPTIONS,
        inputs=[layout.FILTERED, layout.IMAGES],
        section=cfg,
        code=BY_NAME["caption"].code_digest(),
        input_table=layout.IMAGES,
        key="image_id",
        columns=["image_id", "bytes", "alt_text"],
        allow=kept_image_ids(ctx),
        fn=captioner_class(cfg),
        batch_size=cfg.batch_size,
        resources=cfg.resources,
        gpu=cfg.captioner == "llava",
        finalize=finalize,
    )


def run_degrade(ctx: Context) -> dict[str, int]:
    cfg = ctx.cfg.degrade

    def finalize(run):
        t = ctx.lake.read(layout.DEGRADED, columns=["params", "status"])
        ok = t.filter(pc.equal(t.column("status"), "ok"))
        stats = summarize_params(ok.column("params").to_pylist())
        run.log_metrics({f"params.{k}": v for k, v in stats.items()})
        sample = ctx.lake.read(layout.DEGRADED, columns=["pair_id", "status", "hq", "lq"])
        sample = sample.filter(pc.equal(sample.column("status"), "ok")).sort_by("pair_id").slice(0, 16)
        if sample.num_rows:
            batch = {c: np.asarray(sample.column(c).to_pylist(), dtype=object) for c in sample.column_names}
            run.log_image(preview_grid(batch, n=16), "pairs_grid.png")
        first = ok.column("params").to_pylist()[:1]
        if first:
            run.log_dict(json.loads(first[0]), "example_params.json")

    return run_stage(
        ctx,
        stage="degrade",
        table=layout.DEGRADED,
        inputs=[layout.FILTERED, layout.IMAGES],
        section=cfg,
        code=BY_NAME["degrade"].code_digest(),
        input_table=layout.IMAGES,
        key="image_id",
        columns=["image_id", "bytes"],
        allow=kept_image_ids(ctx),
        fn=Degrader,
        batch_size=cfg.batch_size,
        resources=cfg.resources,
        finalize=finalize,
    )

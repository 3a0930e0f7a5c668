"""The ablations stage: rows beside the trained model on the same pairs (stages/ablations.py).

    vae, stage1       PassThroughRestorer actors: D(E(x_LQ)), D(E_dr(x_LQ))
    supir_control0    the restore stage's Restorer at control scale 0 (the prior alone)
    supir @ seeds     the trained model at the extra sampler seeds of ``ablations.seeds``

Each run is one cached, resumable `restorations/<run_id>` partition, like the restore stage's own, so
`evaluate` scores them beside the baselines and the report shows them as columns of Table 1. The
pairs are those of ``ablations.split`` (default the held-out photos, stages/split.py).
"""
from __future__ import annotations

import logging

import pyarrow.compute as pc

from catalog import layout
from catalog.captions import caption_map
from pipelines.common import Context, data_split, run_stage
from pipelines.dag import BY_NAME
from pipelines.restore import restore_models
from stages.ablations import AblationConfig, ablation_runs, stage_class
from stages.restore import RestoreConfig

log = logging.getLogger("supir")



def split_pair_ids(ctx: Context, split: str) -> list[str] | None:
    """pair_ids of the ok degraded pairs whose image is in ``split`` (None: every pair)."""
    if split == "all":
        return None
    by_image = data_split(ctx)
    t = ctx.lake.read(layout.DEGRADED, columns=["pair_id", "image_id", "status"])
    t = t.filter(pc.equal(t.column("status"), "ok"))
    return sorted(p for p, i in zip(t.column("pair_id").to_pylist(), t.column("image_id").to_pylist())
                  if by_image.get(i) == split)


def run_ablations(ctx: Context, restore: RestoreConfig, cfg: AblationConfig | None = None) -> dict[str, dict]:
    """Every ablation run of ``cfg`` (default ctx.cfg.ablations) with the trained model of ``restore``."""
    cfg = cfg or ctx.cfg.ablations
    allow = split_pair_ids(ctx, cfg.split)
    if allow is not None and not allow:
        raise ValueError(f"ablations: no ok degraded pairs in split {cfg.split!r} (ablations.split); "
                         "see split.heldout_fraction")
    captions = caption_map(ctx.lake) if restore.use_captions else {}
    out = {}
    for run in ablation_runs(restore, cfg):
        name = f"{run.method}@seed{run.restore.sampler.seed}" if run.mode == "sample" else run.method
        out[name] = run_stage(
            ctx,
            stage=f"ablation_{run.method}",
            table=layout.partition(layout.RESTORATIONS, run.restore.resolved_run_id()),
            inputs=[layout.PAIRS, layout.CAPTIONS] if captions else [layout.PAIRS],
            section=run,
            code=BY_NAME["ablations"].code_digest(),
            input_table=layout.DEGRADED,
            key="pair_id",
            fn=stage_class(run),
            batch_size=run.restore.batch_size,
            resources=run.restore.resources,
            columns=["pair_id", "image_id", "lq", "hq", "caption", "scale", "status"],
            where=("status", "ok"),
            allow=allow,
            fill=("caption", "image_id", captions),
            models=restore_models(run.restore),
        )
        log.info("ablations: %s -> %s", name, out[name])
    return out

"""The prior stage group: stage 0 (a trained prior where none is pretrained) and negative-quality samples.

    python pipelines/prior.py --config configs/demo.yaml [key.path=value ...]   # --help, --plan, --print-config
    python pipelines/prior.py --config configs/demo.yaml "stages=[prior]"       # stage 0 alone

    prior      model.prior = "train": stages/prior_train.py trains the preset's VAE then UNet on the
               kept images (filtered keep = true, joined with images) and their captions, into
               <lake>/priors/<preset>-<digest>/ (a diffusers folder); the digest covers the
               prior_train config, the model preset and seed, the input tables and the code, so
               an unchanged rerun is a cache hit. Any other model.prior (an SDXL folder, file or
               hub id) is used as it is, loaded and frozen: stage 0 is skipped.
    negatives  stages/negatives.py's NegativeMaker as a Ray Data actor pool over the kept images
               (or the HQ crops of `pairs/degraded`) -> `pairs/negative`, kind "negative".

`pairs` is shared with the degrade stage through the lake's partitions: degrade writes
`pairs/degraded`, negatives `pairs/negative`, each with its own manifest, so neither clears the
other; reading `pairs` reads both. The command is full.py's runner limited to these two stages: the
same run config (negatives shaped like the run's degrade section, as in a full run).
"""
from __future__ import annotations

GROUP = ("prior", "negatives")  # the stages this command runs, of the stage table (pipelines/dag.py)

if __name__ == "__main__":  # run as a script: the runner of full.py, limited to this group's stages
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before the imports below: `--help` stays fast
    from pipelines.full import main

    sys.exit(main(only=GROUP, name="prior", description=__doc__.split("\n\n")[0]))

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog import layout
from catalog.captions import caption_map
from catalog.config import ConfigError, digest, to_dict
from catalog.lake import Lake
from catalog.tracking import RunRef
from model.config import ModelConfig
from pipelines.common import train_image_ids
from pipelines.dag import BY_NAME
from stages.negatives import NegativeMaker, NegativesConfig, preview_grid
from stages.prior_train import read_stage0, train_prior
from stages.prior_train_config import PriorTrainConfig

log = logging.getLogger("supir")

TRAIN = "train"  # model.prior value that asks for stage 0
# fields of PriorTrainConfig that change where or how fast it runs, not what it learns
_RUNTIME_FIELDS = ("device", "num_threads", "resources", "output_dir", "progress", "log_every")


# ---------------------------------------------------------------------------------------------
# stage 0

def read_training_images(lake: Lake, captions: bool = True, allow: Optional[Sequence[str]] = None
                         ) -> tuple[list[str], list[bytes], list[Optional[str]]]:
    """(image_ids, original bytes, captions) of the kept images: filtered keep = true joined with
    images status ok, sorted by image_id; captions from ok `captions` rows (None where missing).
    ``allow``: only these image_ids (the train split: held-out photos never reach stage 0)."""
    kept = lake.read(layout.FILTERED, columns=["image_id", "keep"])
    ids = set(kept.filter(pc.equal(kept.column("keep"), True)).column("image_id").to_pylist())
    if allow is not None:
        ids &= set(allow)
    if not ids:
        raise ValueError("stage 0 needs images: `filtered` has no kept rows in the train split "
                         "(run crawl and filter first, or hold out fewer photos: split.heldout_fraction)")
    found: dict[str, bytes] = {}
    for f in lake.files(layout.IMAGES):
        part = pq.read_table(f, columns=["image_id", "status", "bytes"], filesystem=lake.fs)
        part = part.filter(pc.and_(pc.equal(part.column("status"), "ok"),
                                   pc.is_in(part.column("image_id"), value_set=pa.array(sorted(ids), pa.string()))))
        found.update(zip(part.column("image_id").to_pylist(), part.column("bytes").to_pylist()))
    texts = caption_map(lake) if captions else {}
    order = sorted(found)
    return order, [found[i] for i in order], [texts.get(i) for i in order]


def prior_key(ctx, uses_captions: bool) -> str:
    """Digest of everything a trained prior depends on: config, preset and seed, inputs, code."""
    cfg, model_cfg, lake = ctx.cfg.prior_train, ctx.cfg.model, ctx.lake
    section = {k: v for k, v in to_dict(cfg).items() if k not in _RUNTIME_FIELDS}
    inputs = {t: lake.digest(t) for t in (layout.FILTERED, layout.IMAGES) + ((layout.CAPTIONS,) if uses_captions else ())}
    code = BY_NAME["prior"].code_digest()
    return digest({"prior_train": section, "preset": model_cfg.preset, "seed": model_cfg.seed,
                   "inputs": inputs, "code": code, "train_images": train_image_ids(ctx)})[:16]


def priors_dir(ctx) -> Path:
    cfg = ctx.cfg.prior_train
    if cfg.output_dir:
        return Path(cfg.output_dir)
    if not ctx.lake.local:
        raise ConfigError(f"prior_train.output_dir = '' is not allowed with lake = {ctx.cfg.lake!r}: a trained prior is "
                          "a local diffusers folder; set prior_train.output_dir to a folder every worker can read")
    return Path(ctx.lake.base) / layout.PRIORS


def prior_folder(ctx) -> Path:
    """Where stage 0 of this run writes (or has written) its prior: the folder is named by
    :func:`prior_key`, so it is found again without training (run_prior, --plan)."""
    uses_captions = ctx.cfg.prior_train.captions == "captions"
    return priors_dir(ctx) / f"{ctx.cfg.model.preset}-{prior_key(ctx, uses_captions)}"


def _train_task(cfg: PriorTrainConfig, model_cfg: ModelConfig, images, captions, out_dir: str,
                run: Optional[RunRef]) -> str:
    return str(train_prior(cfg, model_cfg, images, captions, out_dir, run))


def run_prior(ctx) -> Optional[str]:
    """The prior of this run: stage 0's trained folder for model.prior = "train" (cached by digest),
    else model.prior unchanged (an SDXL folder, file or hub id; null: the seeded random prior)."""
    model_cfg = ctx.cfg.model
    if model_cfg.prior != TRAIN:
        log.info("prior: %s (pretrained, frozen; stage 0 skipped)", model_cfg.prior or "random weights")
        return model_cfg.prior
    cfg = ctx.cfg.prior_train
    uses_captions = cfg.captions == "captions"
    folder = prior_folder(ctx)
    params = {"prior_train": to_dict(cfg), "model.preset": model_cfg.preset, "model.seed": model_cfg.seed,
              "folder": str(folder)}
    done = read_stage0(folder)
    with ctx.tracker.stage("prior", params=params, state="cached" if done else "fresh") as run:
        if done is not None:
            log.info("prior: cached %s", folder)
            run.log_metrics({"cached": 1, "psnr_heldout": done["vae"]["psnr_heldout"]})
            return str(folder)
        ids, images, captions = read_training_images(ctx.lake, uses_captions, train_image_ids(ctx))
        log.info("prior: stage 0 on %d images (train split) -> %s", len(ids), folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        args = (cfg, model_cfg, images, captions, str(folder), run if run.enabled else None)
        if _ray_ready():
            import ray

            from pipelines.common import gpus_if_available

            res = cfg.resources
            task = ray.remote(num_cpus=res.cpus_per_worker, num_gpus=gpus_if_available(res.gpus_per_worker))(_train_task)
            ray.get(task.remote(*args))
        else:
            _train_task(*args)
        result = read_stage0(folder)
        run.log_metrics({"cached": 0, "images": len(ids), "psnr_heldout": result["vae"]["psnr_heldout"],
                         "unet_eval_loss": result["unet"]["eval_loss"]})
        return str(folder)


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def resolve_model_config(ctx, prior: Optional[str]) -> ModelConfig:
    """ctx.cfg.model with ``prior`` in place of "train" (what build_model and the trainer load)."""
    return dataclasses.replace(ctx.cfg.model, prior=prior)


# ---------------------------------------------------------------------------------------------
# negatives: the `pairs/negative` partition (the degrade stage owns `pairs/degraded`)

def negatives_config(ctx, prior: Optional[str]) -> NegativesConfig:
    """ctx.cfg.negatives with the run's prior filled in (its own ``prior`` wins when set)."""
    cfg = ctx.cfg.negatives
    source = cfg.prior or prior
    if not source or source == TRAIN:
        raise ConfigError("negatives need a trained or pretrained prior: model.prior = null is not allowed with the "
                          "negatives stage (set model.prior to an SDXL folder, file or hub id, or to 'train')")
    run_degrade = getattr(ctx.cfg, "degrade", None)
    if cfg.like_pairs and run_degrade is not None:  # negatives shaped like the degraded pairs
        cfg = dataclasses.replace(cfg, degrade=run_degrade)
    return dataclasses.replace(cfg, prior=source, preset=ctx.cfg.model.preset)


def run_negatives(ctx, prior: Optional[str] = None) -> dict[str, int]:
    """The negatives stage: kept images (or `pairs/degraded` HQ crops) -> `pairs/negative` (cached, resumable).

    ``prior``: the run's prior (run_prior's result); default: run_prior(ctx)."""
    from pipelines.common import run_stage

    lake = ctx.lake
    prior = run_prior(ctx) if prior is None else prior
    cfg = negatives_config(ctx, prior)
    # the train split only: stage 2 trains on the negatives, so a held-out photo must not be one
    allow = train_image_ids(ctx)
    if cfg.source == "images":
        # every variant of an image is made in one call, so image_id is an exact resume key
        source = dict(inputs=[layout.FILTERED, layout.IMAGES], input_table=layout.IMAGES, columns=["image_id", "bytes", "status"],
                      where=("status", "ok"), allow=allow)
    else:
        source = dict(inputs=[layout.DEGRADED, layout.FILTERED], input_table=layout.DEGRADED,
                      columns=["pair_id", "image_id", "hq", "status"], where=("status", "ok"), allow=allow)
    return run_stage(
        ctx,
        stage="negatives",
        table=layout.NEGATIVES,
        section=cfg,
        code=BY_NAME["negatives"].code_digest(),
        key="image_id",
        fn=NegativeMaker,
        batch_size=cfg.rows_per_batch,
        resources=cfg.resources,
        finalize=lambda run: log_negatives(lake, cfg, run),
        **source,
    )


def log_negatives(lake: Lake, cfg: NegativesConfig, run: RunRef) -> None:
    """PSNR of the samples against their sources, and a grid (source | negative | lq) artifact."""
    t = lake.read(layout.NEGATIVES, columns=["pair_id", "status", "hq", "lq", "params"])
    ok = t.filter(pc.equal(t.column("status"), "ok")).sort_by("pair_id")
    dist = [json.loads(p)["negative"]["psnr_to_source"] for p in ok.column("params").to_pylist()]
    if dist:
        run.log_metrics({"psnr_to_source_mean": sum(dist) / len(dist), "psnr_to_source_min": min(dist)})
    if not (run.enabled and cfg.grid_rows and ok.num_rows):
        return
    rows = ok.slice(0, cfg.grid_rows).to_pydict()
    sources: dict[str, bytes] = {}
    keys = [json.loads(p)["negative"]["source"] for p in rows["params"]]
    if cfg.source == "pairs":
        src = lake.read(layout.DEGRADED, columns=["pair_id", "hq"])
        src = src.filter(pc.is_in(src.column("pair_id"), value_set=pa.array(keys, pa.string())))
        sources = dict(zip(src.column("pair_id").to_pylist(), src.column("hq").to_pylist()))
    run.log_image(preview_grid(rows, sources, n=cfg.grid_rows), "negatives_grid.png")

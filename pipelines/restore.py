"""Restore with SUPIR at scale: a folder of photos into PNGs, or the `pairs` table into `restorations`.

    python pipelines/restore.py --model checkpoints/supir --input photos/ --output restored/
    python pipelines/restore.py --model models:/supir@champion --input in/ --output out/ \\
        --steps 50 --upscale 2 sampler.tau_r=0 tiling.tile_size=96 color_fix=adain

Options not given as flags are ``key.path=value`` overrides of RestoreConfig (stages/restore.py),
for example ``sampler.cfg_scale=7.5`` or ``sampler.linear_control_scale=true``.

Both modes run the Ray-free :class:`stages.restore.Restorer` as a Ray Data actor pool
(``map_batches(..., compute=ActorPoolStrategy(...))``), one model per actor, one GPU per actor
when the cluster has GPUs. MLflow (catalog/tracking.py): seconds per image, steps per second,
status counts, and a grid artifact (LQ | restored [| HQ]).
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Restore a folder of photos with SUPIR into PNGs.")
    ap.add_argument("--model", required=True, help="checkpoint folder (model/checkpoint.py) or models:/ URI")
    ap.add_argument("--input", required=True, help="folder of images (searched recursively)")
    ap.add_argument("--output", required=True, help="folder for the restored PNGs (same relative paths)")
    ap.add_argument("--prior", default=None, help="load the SDXL prior from here instead of the recorded source")
    ap.add_argument("--sampler-preset", choices=["paper", "released"],
                    help="sampler defaults: released (what the released SUPIR-v0Q/v0F weights expect: snapped sigma, "
                         "no restoration guidance, s_noise 1.01, 1024 size conditioning, no VAE tiling) or paper "
                         "(default; DESIGN section 7). Explicit options override it")
    ap.add_argument("--steps", type=int, help="sampling steps (default 50)")
    ap.add_argument("--upscale", type=int, help="output size / input size (default 1)")
    ap.add_argument("--min-size", type=int, help="short side raised to at least this (default 1024)")
    ap.add_argument("--seed", type=int, help="sampling seed (default 0)")
    ap.add_argument("--prompt", help="positive prompt appended to each image's caption")
    ap.add_argument("--negative-prompt", help="negative-quality prompt")
    ap.add_argument("--cfg-scale", type=float, help="CFG scale at sigma 0 (default 4.0)")
    ap.add_argument("--tau-r", type=float, help="restoration guidance exponent, 0 = off (default: the preset's, "
                                                 "paper 4.0, released 0)")
    ap.add_argument("--control-scale", type=float, help="control scale (default 1.0)")
    ap.add_argument("--color-fix", choices=["wavelet", "adain", "none"], help="colour fix (default wavelet)")
    ap.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--dtype", help="auto, float32, float16, bfloat16")
    ap.add_argument("--actors", type=int, help="restoring actors, one model each (default 1)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray cluster (default all)")
    ap.add_argument("--lake", default="lake", help="where the default MLflow store lives (lake/mlflow.db)")
    ap.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or the lake's)")
    ap.add_argument("--experiment", default="supir")
    ap.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar over sampling steps")
    ap.add_argument("overrides", nargs="*", help="RestoreConfig overrides key.path=value, e.g. sampler.s_churn=0")
    return ap.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and bad flags answer before the imports below (torch, diffusers, Ray)

import numpy as np
from PIL import Image

from catalog import layout
from catalog.config import ConfigError, apply_overrides, from_dict, to_dict
from catalog.registry import is_model_uri, resolve_model_path
from catalog.tracking import RunRef, Tracker, TrackingConfig
from pipelines.dag import BY_NAME
from stages.restore import RestoreConfig, Restorer

log = logging.getLogger("supir")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
GRID_ROWS = 4


def restore_actors(ds, cfg: RestoreConfig, timings: bool = False):
    """``ds`` (pair_id, lq[, caption, scale]) -> RESTORATIONS rows, through an actor pool of Restorers."""
    from pipelines.common import actor_pool

    return ds.map_batches(Restorer, fn_constructor_args=(cfg,), fn_constructor_kwargs={"timings": timings},
                          batch_size=cfg.batch_size, **actor_pool(cfg.resources))


def speed_metrics(seconds: Sequence[float], statuses: Sequence[str], num_steps: int,
                  sampling_seconds: Optional[Sequence[float]] = None) -> dict[str, float]:
    """seconds_per_image and steps_per_second (end to end, ok rows); the sampler loop alone when timed."""
    ok = [s for s, st in zip(seconds, statuses) if st == "ok"]
    out: dict[str, float] = {"images": float(len(statuses)), "ok": float(len(ok))}
    for status in sorted(set(statuses)):
        out[f"status.{status}"] = float(sum(1 for s in statuses if s == status))
    if ok:
        per_image = float(np.mean(ok))
        out["seconds_per_image"] = per_image
        out["steps_per_second"] = num_steps / per_image
    if sampling_seconds:
        timed = [s for s, st in zip(sampling_seconds, statuses) if st == "ok" and s > 0]
        if timed:
            out["sampling_steps_per_second"] = num_steps / float(np.mean(timed))
    return out


def log_grid(run: RunRef, rows: list[list[Image.Image]], labels: list[str], name: str = "restore_grid.png") -> None:
    """A grid image artifact (evaluation/grids.py's make_grid when present)."""
    if not rows or not run.enabled:
        return
    try:
        from evaluation.grids import make_grid
    except ImportError:  # evaluation not installed: a plain side-by-side strip
        make_grid = _strip
    run.log_image(make_grid(rows, labels=labels), name)


def _strip(rows: list[list[Image.Image]], labels: Optional[list[str]] = None, cell: int = 256) -> Image.Image:
    grid = Image.new("RGB", (cell * max(len(r) for r in rows), cell * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(img.convert("RGB").resize((cell, cell)), (c * cell, r * cell))
    return grid


# ---------------------------------------------------------------------------------------------
# a folder of photos

class _ReadImage:
    """(path) rows -> Restorer input rows: pair_id = the path relative to the input folder."""

    def __init__(self, root: str):
        self.root = Path(root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(p) for p in batch["path"]]
        ids = np.array([str(p.relative_to(self.root)) for p in paths], dtype=object)
        data = np.empty(len(paths), dtype=object)
        data[:] = [p.read_bytes() for p in paths]
        return {"pair_id": ids, "lq": data}


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def output_names(relative: Sequence[str]) -> dict[str, str]:
    """Input path (relative) -> output path (relative), all distinct: ``a/x.jpg`` -> ``a/x.png``,
    except where two inputs would meet there (``x.jpg`` and ``x.png``): then every input of that
    name that is not already ``.png`` keeps its extension, ``x.jpg`` -> ``x.jpg.png``."""
    first = {r: str(Path(r).with_suffix(".png")) for r in relative}
    taken: dict[str, int] = {}
    for name in first.values():
        taken[name.lower()] = taken.get(name.lower(), 0) + 1
    out = {}
    for r, name in first.items():
        clash = taken[name.lower()] > 1 and Path(r).suffix.lower() != ".png"
        out[r] = f"{r}.png" if clash else name
    assert len({v.lower() for v in out.values()}) == len(out), "output names must be distinct"
    return out


def check_folders(input_dir: Path, output_dir: Path) -> None:
    """ConfigError unless the output folder lies outside the input folder (outputs would overwrite
    or be read back as inputs) and the input folder exists."""
    src, dst = input_dir.resolve(), output_dir.resolve()
    if not src.is_dir():
        raise ConfigError(f"--input {str(input_dir)!r} is not a folder")
    if dst == src or src in dst.parents:
        raise ConfigError(f"--output {str(output_dir)!r} is inside --input {str(input_dir)!r}: restored PNGs could "
                          "overwrite the originals; choose an output folder outside the input folder")


def restore_folder(cfg: RestoreConfig, input_dir: str | Path, output_dir: str | Path,
                   run: Optional[RunRef] = None) -> dict[str, Any]:
    """Restore every image under ``input_dir`` into ``output_dir``/<same relative path>.png.

    Needs Ray initialised. Returns counts per status, speed metrics and the failed files.
    """
    import ray

    check_folders(Path(input_dir), Path(output_dir))
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir)
    paths = list_images(input_dir)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {input_dir}")
    names = output_names([str(p.relative_to(input_dir)) for p in paths])
    output_dir.mkdir(parents=True, exist_ok=True)
    ds = ray.data.from_items([{"path": str(p)} for p in paths], override_num_blocks=min(len(paths), 64))
    ds = ds.map_batches(_ReadImage(str(input_dir)), batch_size=cfg.batch_size, num_cpus=0.1)
    ds = restore_actors(ds, cfg, timings=True)

    seconds, statuses, sampling, failed, grid, notes = [], [], [], {}, [], {}
    t0 = time.time()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, pair_id in enumerate(batch["pair_id"]):
            status = str(batch["status"][i])
            statuses.append(status)
            seconds.append(float(batch["seconds"][i]))
            sampling.append(float(batch["sampling_seconds"][i]))
            if batch["notes"][i]:
                notes[str(pair_id)] = str(batch["notes"][i])
            if status != "ok":
                failed[str(pair_id)] = f"{status}: {batch['error'][i]}"
                log.warning("%s: %s", pair_id, failed[str(pair_id)])
                continue
            out = output_dir / names[str(pair_id)]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(bytes(batch["restored"][i]))
            if len(grid) < GRID_ROWS:
                grid.append([Image.open(input_dir / str(pair_id)), Image.open(out)])
    wall = time.time() - t0
    metrics = speed_metrics(seconds, statuses, cfg.sampler.num_steps, sampling) | {"wall_seconds": wall}
    if run is not None:
        run.log_metrics(metrics)
        log_grid(run, grid, ["LQ", "restored"])
        if failed:
            run.log_dict(failed, "failed.json")
        if notes:
            run.log_dict(notes, "notes.json")
    return {"metrics": metrics, "failed": failed, "notes": notes, "output": str(output_dir)}


# ---------------------------------------------------------------------------------------------
# the lake: pairs -> restorations (called by the full pipeline)

def run_restore(ctx, cfg: Optional[RestoreConfig] = None) -> dict[str, int]:
    """The `restore` stage of the full pipeline: ok rows of `pairs` -> `restorations` (cached, resumable)."""
    from catalog.captions import caption_map
    from pipelines.common import run_stage

    cfg = cfg or ctx.cfg.restore
    captions = caption_map(ctx.lake) if cfg.use_captions else {}
    return run_stage(
        ctx,
        stage="restore",
        table=layout.partition(layout.RESTORATIONS, cfg.resolved_run_id()),  # one partition per sampler setting: runs compare in SQL
        inputs=[layout.PAIRS, layout.CAPTIONS] if captions else [layout.PAIRS],
        section=cfg,
        code=BY_NAME["restore"].code_digest(),
        input_table=layout.DEGRADED,  # negatives are training targets, not restoration inputs
        key="pair_id",
        fn=Restorer,
        batch_size=cfg.batch_size,
        resources=cfg.resources,
        columns=["pair_id", "image_id", "lq", "hq", "caption", "scale", "status"],
        where=("status", "ok"),
        fill=("caption", "image_id", captions),  # degraded pairs carry no caption: the image's, as training reads it
        finalize=lambda run: log_lake_restorations(ctx.lake, cfg, run),
    )


def log_lake_restorations(lake, cfg: RestoreConfig, run: RunRef) -> dict[str, float]:
    """Speed metrics of this run's rows and a grid LQ | restored | HQ of the first few pairs."""
    import pyarrow.compute as pc

    rows = lake.read(layout.RESTORATIONS, columns=["pair_id", "run_id", "status", "seconds"])
    rows = rows.filter(pc.equal(rows.column("run_id"), cfg.resolved_run_id()))
    metrics = speed_metrics(rows.column("seconds").to_pylist(), rows.column("status").to_pylist(),
                            cfg.sampler.num_steps)
    run.log_metrics(metrics)
    ok = [p for p, s in zip(rows.column("pair_id").to_pylist(), rows.column("status").to_pylist()) if s == "ok"]
    ok = sorted(ok)[:GRID_ROWS]
    if ok:
        restored = lake.read(layout.RESTORATIONS, columns=["pair_id", "run_id", "restored"])
        restored = restored.filter(pc.and_(pc.is_in(restored.column("pair_id"), value_set=_arr(ok)),
                                           pc.equal(restored.column("run_id"), cfg.resolved_run_id())))
        pairs = lake.read(layout.PAIRS, columns=["pair_id", "lq", "hq"])
        pairs = pairs.filter(pc.is_in(pairs.column("pair_id"), value_set=_arr(ok)))
        by_id = {p: {} for p in ok}
        for t, cols in ((pairs, ("lq", "hq")), (restored, ("restored",))):
            for r in t.to_pylist():
                by_id[r["pair_id"]].update({c: r[c] for c in cols})
        grid = [[Image.open(io.BytesIO(by_id[p][c])) for c in ("lq", "restored", "hq") if by_id[p].get(c)]
                for p in ok]
        log_grid(run, grid, ["LQ", "restored", "HQ"])
    return metrics


def _arr(values: list[str]):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


# ---------------------------------------------------------------------------------------------
# command line (parse_args: at the top, so that --help needs no heavy import)

FLAG_KEYS = {"prior": "prior", "sampler_preset": "sampler.preset", "steps": "sampler.num_steps", "upscale": "upscale", "min_size": "min_size",
             "seed": "sampler.seed", "prompt": "sampler.positive_prompt",
             "negative_prompt": "sampler.negative_prompt", "cfg_scale": "sampler.cfg_scale",
             "tau_r": "sampler.tau_r", "control_scale": "sampler.control_scale", "color_fix": "color_fix",
             "device": "device", "dtype": "dtype", "actors": "actors"}


def config_from_args(args: argparse.Namespace) -> RestoreConfig:
    data: dict[str, Any] = {"model": args.model, "progress": not args.no_progress}
    apply_overrides(data, list(args.overrides))
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            node = data
            *parents, last = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
    return from_dict(RestoreConfig, data, prefix="restore")


def use_registered_model(model: str, tracking_uri: str, lake: str) -> Optional[Path]:
    """For an MLflow model URI (``models:/supir@champion``, ``models:/supir@latest``, ``runs:/...``):
    point MLFLOW_TRACKING_URI at the store (``--tracking-uri``, else MLFLOW_TRACKING_URI, else the
    lake's) so that the restoring actors resolve it, and resolve it here once to fail early."""
    if not is_model_uri(model):
        return None
    import os

    from catalog.tracking import resolve_uri

    uri, _ = resolve_uri(TrackingConfig(uri=tracking_uri), lake)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by a local Ray cluster's workers
    return resolve_model_path(model, uri)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipelines import logs

    logs.setup()
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
        tracker = Tracker(TrackingConfig(uri=args.tracking_uri, experiment=args.experiment,
                                         enabled=not args.no_tracking), args.lake)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        check_folders(Path(args.input), Path(args.output))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        if use_registered_model(cfg.model, args.tracking_uri, args.lake) is None and not Path(cfg.model).is_dir():
            raise FileNotFoundError(f"no checkpoint folder {cfg.model!r} (model/checkpoint.py writes one)")
    except Exception as e:  # noqa: BLE001 - a missing model, alias or store: say which, before Ray starts
        print(f"model error: {cfg.model}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    from pipelines.common import init_ray
    from pipelines.config import RayConfig

    init_ray(RayConfig(num_cpus=args.num_cpus, progress_bars=not args.no_progress))
    with tracker.pipeline("restore-folder", {"restore": to_dict(cfg), "input": args.input, "output": args.output}):
        with tracker.stage("restore", params=to_dict(cfg)) as run:
            result = restore_folder(cfg, args.input, args.output, run)
    m = result["metrics"]
    print(f"restored {int(m['ok'])}/{int(m['images'])} images into {result['output']}"
          + (f" ({m['seconds_per_image']:.2f} s/image, {m['steps_per_second']:.2f} steps/s)" if m.get("ok") else ""))
    for name, why in result["failed"].items():
        print(f"  failed: {name}: {why}")
    for name, what in result["notes"].items():
        print(f"  note: {name}: {what}")
    return 0 if m.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

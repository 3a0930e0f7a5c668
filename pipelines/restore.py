"""Restore with SUPIR at scale: a folder of photos into PNGs, or the `pairs` table into `restorations`.

    python pipelines/restore.py --input photos/ --output restored/ restore.model=checkpoints/supir
    python pipelines/restore.py --input in/ --output out/ --config configs/sdxl.yaml \\
        restore.model=models:/supir@champion restore.sampler.num_steps=50 restore.upscale=2 restore.color_fix=adain

The options are the run config's (pipelines/config.py): its ``restore`` section (stages/restore.py
RestoreConfig: model, sampler, tiling, device, resources, ...), ``tracking``, ``lake`` (where the
default MLflow store lives) and ``ray``, from ``--config`` (default: none, the built-in defaults)
and ``section.key=value`` overrides, as every entry point takes them; ``--print-config`` lists every
key. Only the folders are flags.

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

# the flags this command had before it took the run config: each is now an override (or gone)
OLD_FLAGS = {"--model": "restore.model", "--prior": "restore.prior", "--sampler-preset": "restore.sampler.preset",
             "--steps": "restore.sampler.num_steps", "--upscale": "restore.upscale", "--min-size": "restore.min_size",
             "--seed": "restore.sampler.seed", "--prompt": "restore.sampler.positive_prompt",
             "--negative-prompt": "restore.sampler.negative_prompt", "--cfg-scale": "restore.sampler.cfg_scale",
             "--tau-r": "restore.sampler.tau_r", "--control-scale": "restore.sampler.control_scale",
             "--color-fix": "restore.color_fix", "--device": "restore.device", "--dtype": "restore.dtype",
             "--actors": "restore.resources.workers", "--num-cpus": "ray.num_cpus", "--lake": "lake",
             "--tracking-uri": "tracking.uri", "--experiment": "tracking.experiment",
             "--no-tracking": "tracking.enabled=false", "--no-progress": "restore.progress=false ray.progress_bars=false"}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from pipelines import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in OLD_FLAGS:
            new = OLD_FLAGS[flag]
            usage = new if "=" in new else f"{new}=<value>"
            print(f"config error: {flag} is no longer a flag: give the run config key as an override, {usage} "
                  "(pipelines/restore.py --help; every key: --print-config)", file=sys.stderr)
            raise SystemExit(2)
    ap = cli.parser("Restore a folder of photos with SUPIR into PNGs (the run config's restore section).",
                    default_config=None, plan=False)
    ap.add_argument("--input", help="folder of images (searched recursively)")
    ap.add_argument("--output", help="folder for the restored PNGs (same relative paths)")
    args = ap.parse_args(argv)
    if not args.print_config and not (args.input and args.output):
        ap.error("--input and --output are required")
    return args


if __name__ == "__main__":
    parse_args()  # --help and bad flags answer before the imports below (torch, diffusers, Ray)

import numpy as np
from PIL import Image

from catalog import layout
from catalog.config import ConfigError, to_dict
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
        models=restore_models(cfg),
    )


def restore_models(cfg: RestoreConfig) -> dict[str, str]:
    """The models a restore run loads, for its cache key: the checkpoint, and a separate prior folder."""
    out = {"model": cfg.model}
    if cfg.prior and Path(cfg.prior).exists():
        out["prior"] = cfg.prior
    return out


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

def load_run_config(args: argparse.Namespace):
    """The run config of the command line (pipelines/config.py load_config), its restore section a
    model to load: ``trained`` names a run's train_adaptor result, which only the pipeline has."""
    from pipelines.config import load_config
    from pipelines.dag import TRAINED

    cfg = load_config(args.config, args.overrides)
    if cfg.restore.model == TRAINED:
        raise ConfigError(f"restore.model = {TRAINED!r} is not allowed here: it names the model train_adaptor of a "
                          "pipeline run produced; give a checkpoint folder or a models:/ URI (restore.model=...)")
    return cfg


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
    from pipelines import cli, logs

    logs.setup()
    args = parse_args(argv)
    try:
        run = load_run_config(args)
        if args.print_config:
            print(cli.config_text(run), end="")
            return 0
        cfg = run.restore
        tracker = Tracker(run.tracking, run.lake)
        check_folders(Path(args.input), Path(args.output))
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        if use_registered_model(cfg.model, run.tracking.uri, run.lake) is None and not Path(cfg.model).is_dir():
            raise FileNotFoundError(f"no checkpoint folder {cfg.model!r} (model/checkpoint.py writes one)")
    except Exception as e:  # noqa: BLE001 - a missing model, alias or store: say which, before Ray starts
        print(f"model error: {cfg.model}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    from pipelines.common import init_ray

    init_ray(run.ray)
    with tracker.pipeline("restore-folder", {"restore": to_dict(cfg), "input": args.input, "output": args.output}):
        with tracker.stage("restore", params=to_dict(cfg)) as stage_run:
            result = restore_folder(cfg, args.input, args.output, stage_run)
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

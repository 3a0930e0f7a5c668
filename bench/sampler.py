"""Sampler settings of a trained model side by side on pairs no training stage saw: one JSON line per variant.

    python bench/sampler.py                               # ./lake's trained demo model, its held-out pairs
    python bench/sampler.py --extra 8                     # + one pair from each of 8 photos outside data/samples
    python bench/sampler.py --variants '[{"name": "tau1", "sampler": {"tau_r": 1}},
                                          {"name": "tau1_c0", "sampler": {"tau_r": 1, "control_scale": 0}}]'

Trains nothing and writes nothing to the lake. The pairs are the lake's `pairs` rows of its held-out
photos (stages/split.py with the config's ``split`` section), plus, with ``--extra N``, pairs the
config's degrade section makes from the first N photos of ``--photos`` whose names are not in
data/samples. Each variant is the config's ``restore`` section (and sampler) with the variant's
``restore`` / ``sampler`` overrides; the names ``bicubic``, ``vae`` (D(E(x_LQ))) and ``stage1``
(D(E_dr(x_LQ))) are the baselines without sampling. Per line: each metric's mean over the pairs
and the seconds per pair. ``--save DIR`` writes each variant's first four restorations side by
side as DIR/<name>.png, to look at.

The default variants are the restoration-guidance sweep behind configs/demo.yaml's tau_r (issue 15).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_VARIANTS = [
    {"name": "bicubic"}, {"name": "vae"}, {"name": "stage1"},
    {"name": "tau4", "sampler": {"tau_r": 4.0}},
    {"name": "tau2", "sampler": {"tau_r": 2.0}},
    {"name": "tau1", "sampler": {"tau_r": 1.0}},
    {"name": "tau0.5", "sampler": {"tau_r": 0.5}},
    {"name": "tau4_control0", "sampler": {"tau_r": 4.0, "control_scale": 0.0}},
    {"name": "tau1_control0", "sampler": {"tau_r": 1.0, "control_scale": 0.0}},
]
PASS_THROUGH = ("vae", "stage1")


def heldout_rows(lake, cfg) -> list[dict]:
    from catalog.captions import caption_map, fill_missing
    from stages.split import SplitConfig, assign_split, heldout_ids

    kept = [r["image_id"] for r in lake.read("filtered", columns=["image_id", "keep"]).to_pylist() if r["keep"]]
    held = set(heldout_ids(assign_split(kept, getattr(cfg, "split", None) or SplitConfig())))
    # as the restore stage joins them: degraded pairs carry no caption of their own
    pairs = fill_missing(lake.read("pairs"), "caption", "image_id", caption_map(lake))
    return [r for r in pairs.to_pylist()
            if r["image_id"] in held and r["kind"] == "degraded" and r["status"] == "ok"]


def extra_rows(photos: Path, n: int, cfg) -> list[dict]:
    """One degraded pair (the config's degrade section) from each of the first ``n`` photos not in data/samples."""
    import numpy as np

    from catalog.schemas import image_id_of
    from stages.degrade import Degrader

    shipped = {p.name for p in (ROOT / "data" / "samples").iterdir()}
    paths = [p for p in sorted(photos.glob("*.jp*g")) if p.name not in shipped][:n]
    if not paths:
        return []
    data = [p.read_bytes() for p in paths]
    out = Degrader(dataclasses.replace(cfg.degrade, variants_per_image=1))(
        {"image_id": np.array([image_id_of(d) for d in data], dtype=object),
         "bytes": np.array(data, dtype=object), "caption": np.array(["a photo"] * len(data), dtype=object)})
    return [dict(zip(out, values)) for values in zip(*out.values()) if values[list(out).index("status")] == "ok"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--lake", default="", help="default: the config's lake")
    ap.add_argument("--model", default="", help="a checkpoint folder (default: the lake's trained demo model)")
    ap.add_argument("--variants", default="", help="a JSON list of {name, sampler: {...}, restore: {...}}")
    ap.add_argument("--extra", type=int, default=0, help="also one pair from each of N photos outside data/samples")
    ap.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "photos"))
    ap.add_argument("--metrics", default="psnry,ssim,stlpips,niqe,rgb_mean_diff")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--save", default="", help="write each variant's first 4 restorations to DIR/<name>.png")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from catalog import codec
    from catalog.lake import Lake
    from evaluation.metrics import load_metric, score
    from model.restoration import Restoration
    from model.sampler import sampling_sigmas
    from pipelines.config import load_config
    from pipelines.train import final_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"lake={args.lake}"] if args.lake else [])
    lake = Lake(cfg.lake)
    held = heldout_rows(lake, cfg)
    rows = held + extra_rows(Path(args.photos), args.extra, cfg)
    if not rows:
        raise SystemExit(f"no held-out pairs in {cfg.lake}: run the demo (or its data stages) first")
    model_path = args.model or str(final_folder(lake, cfg.train, "adaptor"))
    variants = json.loads(args.variants) if args.variants else DEFAULT_VARIANTS
    metrics = [load_metric(m, cfg.evaluate.weights_dir, torch.device("cpu")) for m in args.metrics.split(",")]
    hq = [bytes(r["hq"]) for r in rows]
    images = [(codec.decode_rgb(bytes(r["lq"])), codec.decode_rgb(bytes(r["hq"]))) for r in rows]
    base = dataclasses.replace(cfg.restore, progress=False)
    restoration = Restoration.from_checkpoint(model_path, base, device=cfg.restore.device, dtype=cfg.restore.dtype)
    print(json.dumps({"model": model_path, "lake": str(cfg.lake), "pairs": len(rows),
                      "heldout_pairs": len(held), "extra_pairs": len(rows) - len(held)}), flush=True)

    for v in variants:
        name = v["name"]
        t0 = time.perf_counter()
        if name == "bicubic":
            out = [lq.resize(h.size, Image.Resampling.BICUBIC) for lq, h in images]
        else:
            sampler = dataclasses.replace(base.sampler, **v.get("sampler", {}))
            restoration.cfg = dataclasses.replace(base, **v.get("restore", {}), sampler=sampler)
            restoration.sigmas = sampling_sigmas(sampler.num_steps)
            out = []
            for r, (lq, h) in zip(rows, images):
                scale = max(1, round(h.width / lq.width))
                out.append(restoration.round_trip(lq, name, scale) if name in PASS_THROUGH
                           else restoration.restore(lq, str(r["pair_id"]), r.get("caption"), scale))
        seconds = time.perf_counter() - t0
        png = [codec.encode_png(img) for img in out]
        line = {"name": name, "pairs": len(rows), "seconds_per_pair": round(seconds / len(rows), 3),
                **{k: v[k] for k in ("sampler", "restore") if k in v}}
        for m in metrics:
            values = [value for value, status, _ in score(m, png, hq) if status == "ok"]
            line[m.name] = round(float(np.mean(values)), 4) if values else None
        print(json.dumps(line), flush=True)
        if args.save:
            strip = Image.new("RGB", (sum(i.width for i in out[:4]), max(i.height for i in out[:4])))
            x = 0
            for img in out[:4]:
                strip.paste(img, (x, 0))
                x += img.width
            Path(args.save).mkdir(parents=True, exist_ok=True)
            strip.save(Path(args.save) / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

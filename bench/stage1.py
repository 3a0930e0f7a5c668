"""Stage 1 (E_dr) against bicubic on held-out pairs, for any photos and budget; prints JSON.

    python bench/stage1.py                                    # the demo: data/samples, demo.yaml's budget
    python bench/stage1.py --photos data/samples ../shared/data/photos --holdout 8 \\
        --vae-steps 3000 --steps 800 --eval-every 200          # more photos, more steps
    python bench/stage1.py --prior lake/priors/tiny-...       # reuse a stage-0 folder (skips stage 0)

Photos are taken from the folders in order (each sorted by name, a file name seen before is
skipped); the last ``--holdout`` photos are held out of stage 0 and of stage 1. Stage 0 trains the
tiny VAE only (configs/demo.yaml's prior_train section, UNet steps 0): stage 1 needs the decoder,
not the UNet. Stage 1 is the demo's train.encoder section with the given overrides, run in this
process (stages/train.py's loop, the one Ray Train runs). Every ``--eval-every`` steps its E_dr
is scored on degraded pairs of the held-out photos and of the training photos
(evaluation/stage1.py): bicubic, vae_ceiling = D(E(x_GT)), edr = D(E_dr(x_LQ)), PSNR dB.

The issue 7 target is edr > bicubic on the held-out pairs. No assertions: this measures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def collect_photos(folders: list[str]) -> list[Path]:
    seen, out = set(), []
    for folder in folders:
        for p in sorted(Path(folder).glob("*")):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") and p.name not in seen:
                seen.add(p.name)
                out.append(p)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--photos", nargs="+", default=[str(ROOT / "data" / "samples")])
    ap.add_argument("--holdout", type=int, default=1, help="last N photos held out of both stages")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, as pipelines/full.py takes them (e.g. prior_train.recolor=0.5 train.encoder.lr=2e-4)")
    ap.add_argument("--prior", default="", help="an existing stage-0 folder (skips stage 0)")
    ap.add_argument("--vae-steps", type=int, default=0, help="stage-0 VAE steps (0: the config's)")
    ap.add_argument("--steps", type=int, default=0, help="stage-1 steps (0: the config's)")
    ap.add_argument("--lr", type=float, default=0.0, help="stage-1 peak lr (0: the config's)")
    ap.add_argument("--batch-size", type=int, default=0, help="stage-1 batch (0: the config's)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--held-variants", type=int, default=4, help="degraded pairs per held-out photo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="", help="where the prior and checkpoints go (default: a temp folder)")
    args = ap.parse_args(argv)

    import torch

    from evaluation.stage1 import pair_tensors, stage1_scores
    from model.config import ModelConfig
    from model.supir import build_model
    from pipelines.config import load_config
    from stages.prior_train import read_stage0, train_prior
    from stages.train import LocalSession, load_parts, train_loop
    from stages.degrade import degrade_files

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    photos = collect_photos(args.photos)
    if len(photos) <= args.holdout or args.holdout < 1:
        raise SystemExit(f"--holdout {args.holdout}: needs at least one photo on each side, found {len(photos)} photos")
    train, held = photos[:-args.holdout], photos[-args.holdout:]
    out = Path(args.out or tempfile.mkdtemp(prefix="supir-bench-stage1-"))
    result: dict = {"photos": {"train": [p.name for p in train], "held_out": [p.name for p in held]}}

    t0 = time.perf_counter()
    if args.prior:
        prior = Path(args.prior)
    else:
        p0 = dataclasses.replace(cfg.prior_train, unet_steps=0, sample_num_steps=0, progress=False, device=args.device,
                                 num_threads=args.threads, holdout_images=len(held),
                                 **({"vae_steps": args.vae_steps} if args.vae_steps else {}))
        prior = train_prior(p0, ModelConfig(preset="tiny"), [p.read_bytes() for p in train + held],
                            ["a photo"] * len(photos), out / "prior")
    stage0 = read_stage0(prior)
    result["stage0"] = {"prior": str(prior), "vae_steps": stage0["vae"]["steps"],
                        "vae_psnr_heldout": round(stage0["vae"]["psnr_heldout"], 3),
                        "seconds": round(time.perf_counter() - t0, 1)}

    enc = cfg.train.encoder
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size)) if v}
    enc = dataclasses.replace(enc, **overrides, checkpoint_every=args.eval_every, keep_checkpoints=10**6,
                              progress=True)
    # pairs made with the run's degrade section, so --set degrade.* takes effect
    train_rows = degrade_files(train, cfg.degrade).to_pylist()
    model_cfg = ModelConfig(preset="tiny", prior=str(prior))
    t1 = time.perf_counter()
    train_loop(enc, model_cfg, LocalSession(train_rows, out / "stage1", keep=10**6),
               use_gpu=args.device.startswith("cuda"), num_threads=max(1, int(enc.resources.cpus_per_worker)))
    result["stage1"] = {"steps": enc.steps, "lr": enc.lr, "batch_size": enc.batch_size, "crop_size": enc.crop_size,
                        "train_pairs": len(train_rows), "seconds": round(time.perf_counter() - t1, 1)}

    def pairs(photos: list[Path], variants: int) -> list[dict]:
        return degrade_files(photos, dataclasses.replace(cfg.degrade, variants_per_image=variants)).to_pylist()

    sets = {"held_out": pair_tensors(pairs(held, args.held_variants)), "train": pair_tensors(pairs(train, 1))}
    model = build_model(model_cfg)
    scores = {name: {"init": stage1_scores(model, pairs)} for name, pairs in sets.items()}
    for step in sorted({*range(args.eval_every, enc.steps + 1, args.eval_every), enc.steps}):
        load_parts(model, out / "stage1" / f"checkpoint_{step:08d}" / "model")
        for name, pairs in sets.items():
            scores[name][str(step)] = stage1_scores(model, pairs)
    for name, by_step in scores.items():
        last = by_step[str(enc.steps)]
        scores[name]["summary"] = {"bicubic": last["bicubic"], "vae_ceiling": last["vae_ceiling"],
                                   "edr_init": by_step["init"]["edr"],
                                   "edr_by_step": {s: v["edr"] for s, v in by_step.items() if s != "init"},
                                   "edr_beats_bicubic": last["edr"] > last["bicubic"], "pairs": len(sets[name])}
    result["scores"] = scores
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

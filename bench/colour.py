"""Colour references on a lake's pairs, and a learned colour estimator as an experiment; prints JSON.

    python bench/colour.py                                # ./lake after `make demo`, configs/demo.yaml
    python bench/colour.py --val ../shared/data/photos    # also score photos outside the lake
    python bench/colour.py --model "" --steps 0           # the LQ alone: no model, no estimator

Issue 15 asks for the restoration's channel means within 3 levels of the HQ's. The colour fix copies
the low frequencies of a reference (``restore.color_fix_reference``), so the result can only be as
close as its reference. Per split of the lake's degraded pairs (the run's held-out split,
stages/split.py), this prints the colour error (the evaluate stage's rgb_mean_diff: max over R, G, B
of |channel mean - the HQ's|, 0-255 levels, mean over pairs) of:

- ``lq``: the bicubic LQ (``color_fix_reference: lq``, the demo's);
- ``vae_lq`` = D(E(x_LQ)), ``stage1`` = D(E_dr(x_LQ)) (SUPIR's reference) and ``vae_hq`` = D(E(x_HQ)),
  with a trained model (``--model``: default the run's ``<lake>/train/<train.name>-adaptor/final``),
  and ``lq_stage1_shift``: the LQ moved by stage 1's change of the mean colour, stage1 - vae_lq;
- ``estimator``: a small CNN (``--width``) trained here, in about a minute on 2 cores, to predict the
  HQ's ``--pool`` x ``--pool`` pooled colour from the LQ (block means, deviations, minima and maxima,
  with a global branch). It trains on fresh degradations (the config's ``degrade`` section) of
  ``--crops`` random crops per photo of the lake's train-split photos only.

``--val``: folders of photos that are not in the lake (by file name), degraded the same way
(``--val-variants`` each): settings are chosen on them, not on the held-out pairs. No assertions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


class ColourEstimator(nn.Module):
    """LQ (B, 3, H, W) in [0, 1] -> the HQ's colour pooled ``pool`` x ``pool`` (B, 3, H/pool, W/pool):
    the LQ's block means plus a learned correction from block statistics and a global summary."""

    def __init__(self, width: int = 48, pool: int = 8):
        super().__init__()
        self.pool = pool
        self.local = nn.Sequential(nn.Conv2d(12, width, 3, padding=1), nn.SiLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.summary = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.head = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=2, dilation=2), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.SiLU(),
                                  nn.Conv2d(width, 3, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # starts as the LQ's own block means
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        mean = F.avg_pool2d(x, p)
        sd = (F.avg_pool2d(x * x, p) - mean * mean).clamp_min(0).sqrt()
        feats = torch.cat([mean, sd, F.max_pool2d(x, p), -F.max_pool2d(-x, p)], 1)
        h = self.local(feats)
        g = self.summary(h.mean((2, 3)))[:, :, None, None].expand_as(h)
        return mean + self.head(torch.cat([h, g], 1))


def unit_pairs(rows) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(HQ, LQ) (3, H, W) in [0, 1] of `pairs` rows (evaluation.stage1.pair_tensors, rescaled)."""
    from evaluation.stage1 import pair_tensors

    return [((hq[0] + 1) / 2, (lq[0] + 1) / 2) for hq, lq in pair_tensors(rows)]


def colour_error(x: torch.Tensor, hq: torch.Tensor) -> float:
    """rgb_mean_diff of one image pair in [0, 1]: max over channels of |mean - HQ mean|, in levels."""
    return float((x.clamp(0, 1).mean((-2, -1)) - hq.mean((-2, -1))).abs().max() * 255)


def degraded(ids: list[str], data: list[bytes], degrade, variants: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(HQ, LQ) tensors of ``variants`` pairs per image, as the degrade stage makes them with ``seed``."""
    from stages.degrade import Degrader

    cfg = dataclasses.replace(degrade, variants_per_image=variants, seed=seed)
    out = Degrader(cfg)({"image_id": np.array(ids, dtype=object), "bytes": np.array(data, dtype=object)})
    return unit_pairs([{"hq": h, "lq": lq} for s, h, lq in zip(out["status"], out["hq"], out["lq"]) if s == "ok"])


def train_estimator(pairs: list[tuple[torch.Tensor, torch.Tensor]], args) -> ColourEstimator:
    torch.manual_seed(args.seed)
    net = ColourEstimator(args.width, args.pool)
    hq = torch.stack([h for h, _ in pairs])
    lq = torch.stack([lq for _, lq in pairs])
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.steps):
        idx = torch.randint(len(hq), (args.batch_size,), generator=g)
        h, x = hq[idx], lq[idx]
        if torch.rand(1, generator=g) < 0.5:
            h, x = h.flip(3), x.flip(3)
        pred, target = net(x), F.avg_pool2d(h, args.pool)
        # the block colours, and the image mean (what rgb_mean_diff scores) once more
        loss = F.l1_loss(pred, target) + F.l1_loss(pred.mean((2, 3)), target.mean((2, 3)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (lake=..., degrade.*)")
    ap.add_argument("--model", default=None, help="a trained model folder ('' for none; default the run's final one)")
    ap.add_argument("--val", nargs="*", default=[], help="folders of photos outside the lake, scored for lq and estimator")
    ap.add_argument("--val-variants", type=int, default=4)
    ap.add_argument("--crops", type=int, default=96, help="fresh degraded crops per train-split photo")
    ap.add_argument("--steps", type=int, default=3000, help="estimator steps (0: no estimator)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from catalog import layout
    from catalog.lake import Lake
    from pipelines.common import data_split
    from pipelines.config import load_config
    from pipelines.prior import read_training_images
    from stages.split import train_ids

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    lake = Lake(cfg.lake)
    split = data_split(SimpleNamespace(cfg=cfg, lake=lake))
    rows = lake.read(layout.DEGRADED, columns=["pair_id", "image_id", "status", "hq", "lq"]).to_pylist()
    pairs = {s: unit_pairs([r for r in rows if r["status"] == "ok" and split.get(r["image_id"]) == s])
             for s in sorted(set(split.values()))}
    result: dict = {"lake": str(cfg.lake), "pairs": {s: len(p) for s, p in pairs.items()}, "levels": {}}
    if args.val:
        names = {Path(p).name for p in (ROOT / "data" / "samples").glob("*")}
        files = [p for f in args.val for p in sorted(Path(f).glob("*.jpg")) if p.name not in names]
        from stages.degrade import degrade_files

        val = degrade_files(files, dataclasses.replace(cfg.degrade, variants_per_image=args.val_variants, seed=7))
        pairs["val"] = unit_pairs([r for r in val.to_pylist() if r["status"] == "ok"])
        result["pairs"]["val"] = len(pairs["val"])
        result["val_photos"] = len(files)

    refs: dict = {"lq": lambda hq, lq: lq}
    folder = args.model if args.model is not None else str(Path(lake.base) / "train" / f"{cfg.train.name}-adaptor" / "final")
    if folder and Path(folder).is_dir():
        from model.checkpoint import load_model

        model = load_model(folder).eval()
        vae = lambda x, enc: (model.decode(enc(x * 2 - 1)).float() + 1) / 2  # noqa: E731 - [0, 1] in and out
        refs |= {"vae_lq": lambda hq, lq: vae(lq, model.encode), "stage1": lambda hq, lq: vae(lq, model.encode_lq),
                 "vae_hq": lambda hq, lq: vae(hq, model.encode),
                 # the LQ moved by what stage 1 changed in the mean colour (the VAE's own greying cancels)
                 "lq_stage1_shift": lambda hq, lq: lq + (vae(lq, model.encode_lq) - vae(lq, model.encode)).mean(
                     (-2, -1), keepdim=True)}
        result["model"] = folder
    if args.steps:
        ids, data, _ = read_training_images(lake, captions=False, allow=train_ids(split))
        t0 = time.perf_counter()
        train_pairs = degraded(ids, data, cfg.degrade, args.crops, seed=1000)
        t1 = time.perf_counter()
        net = train_estimator(train_pairs, args)
        refs["estimator"] = lambda hq, lq: F.interpolate(net(lq), size=lq.shape[-2:], mode="bilinear")
        result["estimator"] = {"train_photos": len(ids), "train_pairs": len(train_pairs), "steps": args.steps,
                               "width": args.width, "pool": args.pool,
                               "params": sum(p.numel() for p in net.parameters()),
                               "degrade_s": round(t1 - t0, 1), "train_s": round(time.perf_counter() - t1, 1)}
    with torch.inference_mode():
        for s, ps in pairs.items():
            for name, ref in refs.items():
                if s == "val" and name not in ("lq", "estimator"):
                    continue
                errs = [colour_error(ref(hq[None], lq[None])[0], hq) for hq, lq in ps]
                cell = {"mean": round(float(np.mean(errs)), 2)}
                if len(errs) <= 8:
                    cell["per_pair"] = [round(e, 1) for e in errs]
                result["levels"].setdefault(s, {})[name] = cell
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

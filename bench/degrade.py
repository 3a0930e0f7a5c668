"""Benchmark: our Real-ESRGAN degradation against BasicSR's own, same GT crops, one invocation.

    python bench/degrade.py [--n 256] [--batch 8] [--gt-size 512] [--threads 2]

Ours runs in this process (the project venv). BasicSR runs in a subprocess with the Python of a
separate venv (default .venv-bench, see --setup below), because basicsr 1.4.2 pins stale
dependencies. The subprocess is this same file with --worker basicsr: it imports only numpy,
torch, cv2, scipy and the three basicsr modules Real-ESRGAN's training uses
(data.degradations, utils.img_process_util, utils.diffjpeg), and replays
RealESRGANDataset.__getitem__ (kernels) + RealESRGANModel.feed_data (degradation) with the
x4plus options. Two shims go into sys.modules before that import (no file is patched):
torchvision.transforms.functional_tensor (removed from torchvision) and empty parent packages
for basicsr / basicsr.data / basicsr.utils (their __init__ files import every dataset and model).
filter2D gets contiguous inputs (its .view fails on DiffJPEG's non-contiguous output in torch 2.x).

Both sides see the same uint8 GT crops (random --gt-size crops of --photos, default the 27
photos in ../shared/data/photos; data/samples for the 8 samples), batch 8, CPU, the same torch
thread count; time covers kernel/parameter generation and the degradation (USM sharpening
included), not decoding or PNG encoding. Prints JSON: images/s of each, their ratio, and the
mean PSNR of the bicubic-upscaled LQ against the (unsharpened) GT for each, with its standard
error: the two sides draw their degradations independently, so their means differ by chance too
(about 0.33 dB, one standard error, at --n 256 --gt-size 256).

Set up the BasicSR venv once (about 2 minutes from the local wheel cache):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-bench/bin/pip install --no-deps basicsr==1.4.2
    .venv-bench/bin/pip install numpy scipy opencv-python-headless

or, sharing the project venv's torch (what the numbers in the README used):

    python3 -m venv .venv-bench
    echo $PWD/.venv/lib/python3.11/site-packages > .venv-bench/lib/python3.11/site-packages/project.pth
    .venv-bench/bin/pip install --no-deps basicsr==1.4.2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def make_crops(n: int, size: int, seed: int = 0, photos: Path = PHOTOS) -> np.ndarray:
    """n random size x size crops cycling over the JPEGs in ``photos``, (n, size, size, 3) uint8."""
    from PIL import Image

    paths = sorted(Path(photos).glob("*.jpg"))
    if not paths:  # no silent fallback: a worktree has no ../shared, and another set gives other numbers
        sys.exit(f"--photos {photos}: no *.jpg there (the shared photos, or data/samples for the 8 samples)")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        img = images[i % len(images)]
        top = rng.integers(0, img.shape[0] - size + 1)
        left = rng.integers(0, img.shape[1] - size + 1)
        crops.append(img[top : top + size, left : left + size])
    return np.stack(crops)


def psnr_bicubic(lq: torch.Tensor, gt: torch.Tensor) -> list[float]:
    """PSNR (RGB, [0, 1]) of the bicubic-upscaled LQ against the GT, one value per image."""
    up = torch.clamp(F.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False), 0, 1)
    up = (up * 255).round() / 255
    mse = ((up - gt) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(1 / mse)).tolist()


def psnr_stats(psnrs: list[float], batch: int) -> dict:
    """Mean PSNR and its standard error. BasicSR draws resize, noise type and final order once per
    batch, so images of a batch are not independent draws: the error comes from the batch means."""
    means = [float(np.mean(psnrs[b : b + batch])) for b in range(0, len(psnrs), batch)]
    se = float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else float("nan")
    return {"psnr_lq_bicubic": float(np.mean(psnrs)), "psnr_se": se}


def run_ours(crops: np.ndarray, batch: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from catalog.schemas import pair_id_of
    from degradations import DegradeConfig, degrade_batch, draw_params

    cfg = DegradeConfig(gt_size=crops.shape[1])
    warm = torch.from_numpy(crops[:2]).permute(0, 3, 1, 2).contiguous().float() / 255
    degrade_batch(warm, [draw_params(cfg, pair_id_of(f"warmup{i}", "degraded")) for i in range(2)])  # untimed
    psnrs, seconds = [], 0.0
    for b in range(0, len(crops), batch):
        gt = torch.from_numpy(crops[b : b + batch]).permute(0, 3, 1, 2).contiguous().float() / 255  # (B, 3, H, W)
        t = time.perf_counter()
        params = [draw_params(cfg, pair_id_of(f"bench{i}", "degraded")) for i in range(b, b + len(gt))]
        lq = degrade_batch(gt, params)
        seconds += time.perf_counter() - t
        psnrs += psnr_bicubic(lq, gt)
    return {"images_per_s": len(crops) / seconds, "seconds": seconds, **psnr_stats(psnrs, batch)}


# ---------------------------------------------------------------- BasicSR worker (other venv)
X4PLUS = dict(  # options/train_realesrgan_x4plus.yml
    kernel_list=["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    kernel_prob=[0.45, 0.25, 0.12, 0.03, 0.12, 0.03], sinc_prob=0.1, blur_sigma=[0.2, 3], betag_range=[0.5, 4],
    betap_range=[1, 2], sinc_prob2=0.1, blur_sigma2=[0.2, 1.5], betag_range2=[0.5, 4], betap_range2=[1, 2],
    final_sinc_prob=0.8, resize_prob=[0.2, 0.7, 0.1], resize_range=[0.15, 1.5], gaussian_noise_prob=0.5,
    noise_range=[1, 30], poisson_scale_range=[0.05, 3], gray_noise_prob=0.4, jpeg_range=[30, 95],
    second_blur_prob=0.8, resize_prob2=[0.3, 0.4, 0.3], resize_range2=[0.3, 1.2], gaussian_noise_prob2=0.5,
    noise_range2=[1, 25], poisson_scale_range2=[0.05, 2.5], gray_noise_prob2=0.4, jpeg_range2=[30, 95], scale=4,
)


def _import_basicsr():
    import types

    import torchvision.transforms.functional as TF

    shim = types.ModuleType("torchvision.transforms.functional_tensor")
    shim.rgb_to_grayscale = TF.rgb_to_grayscale
    sys.modules.setdefault("torchvision.transforms.functional_tensor", shim)
    import importlib.util

    root = Path(importlib.util.find_spec("basicsr").submodule_search_locations[0])
    for name in ("basicsr", "basicsr.data", "basicsr.utils"):  # parents without their heavy __init__
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(root / Path(*name.split(".")[1:]))]
        sys.modules[name] = pkg
    from basicsr.data import degradations
    from basicsr.utils.diffjpeg import DiffJPEG
    from basicsr.utils.img_process_util import USMSharp, filter2D

    def filter2d(img, kernel):  # DiffJPEG returns non-contiguous tensors in torch 2.x; filter2D views
        return filter2D(img.contiguous(), kernel)

    return degradations, DiffJPEG, USMSharp, filter2d


def _basicsr_kernels(deg, opt, rng_random, np_random):
    """RealESRGANDataset.__getitem__'s three kernels (21x21 tensors)."""
    kernel_range = [2 * v + 1 for v in range(3, 11)]
    out = []
    for sfx in ("", "2"):
        k = rng_random.choice(kernel_range)
        if np_random.uniform() < opt["sinc_prob" + sfx]:
            omega = np_random.uniform(np.pi / 3, np.pi) if k < 13 else np_random.uniform(np.pi / 5, np.pi)
            kernel = deg.circular_lowpass_kernel(omega, k, pad_to=False)
        else:
            kernel = deg.random_mixed_kernels(
                opt["kernel_list"], opt["kernel_prob"], k, opt["blur_sigma" + sfx], opt["blur_sigma" + sfx],
                [-math.pi, math.pi], opt["betag_range" + sfx], opt["betap_range" + sfx], noise_range=None)
        pad = (21 - k) // 2
        out.append(torch.FloatTensor(np.pad(kernel, ((pad, pad), (pad, pad)))))
    if np_random.uniform() < opt["final_sinc_prob"]:
        k = rng_random.choice(kernel_range)
        omega = np_random.uniform(np.pi / 3, np.pi)
        out.append(torch.FloatTensor(deg.circular_lowpass_kernel(omega, k, pad_to=21)))
    else:
        pulse = torch.zeros(21, 21)
        pulse[10, 10] = 1
        out.append(pulse)
    return out


def run_basicsr(crops: np.ndarray, batch: int) -> dict:
    import random

    deg, DiffJPEG, USMSharp, filter2D = _import_basicsr()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    opt = X4PLUS
    usm, jpeger = USMSharp(), DiffJPEG(differentiable=False)
    psnrs, seconds = [], 0.0
    with torch.no_grad():
        warm = torch.from_numpy(crops[:2]).permute(0, 3, 1, 2).contiguous().float() / 255
        ks = [_basicsr_kernels(deg, opt, random, np.random) for _ in range(2)]  # untimed warm-up
        _feed_data(deg, opt, usm(warm), *(torch.stack([k[j] for k in ks]) for j in range(3)), jpeger, filter2D)
        for b in range(0, len(crops), batch):
            gt = torch.from_numpy(crops[b : b + batch]).permute(0, 3, 1, 2).contiguous().float() / 255
            t = time.perf_counter()
            ks = [_basicsr_kernels(deg, opt, random, np.random) for _ in range(len(gt))]
            k1, k2, sinc = (torch.stack([k[j] for k in ks]) for j in range(3))
            lq = _feed_data(deg, opt, usm(gt), k1, k2, sinc, jpeger, filter2D)
            seconds += time.perf_counter() - t
            psnrs += psnr_bicubic(lq, gt)
    return {"images_per_s": len(crops) / seconds, "seconds": seconds, **psnr_stats(psnrs, batch)}


def _feed_data(deg, opt, gt_usm, kernel1, kernel2, sinc_kernel, jpeger, filter2D):
    """RealESRGANModel.feed_data's degradation (batch-level random choices, as there)."""
    import random

    ori_h, ori_w = gt_usm.shape[2:4]

    def resize_noise(out, sfx, size=None):
        updown = random.choices(["up", "down", "keep"], opt["resize_prob" + sfx])[0]
        lo, hi = opt["resize_range" + sfx]
        scale = np.random.uniform(1, hi) if updown == "up" else np.random.uniform(lo, 1) if updown == "down" else 1
        mode = random.choice(["area", "bilinear", "bicubic"])
        if sfx:
            out = F.interpolate(out, size=(int(ori_h / opt["scale"] * scale), int(ori_w / opt["scale"] * scale)), mode=mode)
        else:
            out = F.interpolate(out, scale_factor=scale, mode=mode)
        if np.random.uniform() < opt["gaussian_noise_prob" + sfx]:
            return deg.random_add_gaussian_noise_pt(out, sigma_range=opt["noise_range" + sfx], clip=True, rounds=False,
                                                    gray_prob=opt["gray_noise_prob" + sfx])
        return deg.random_add_poisson_noise_pt(out, scale_range=opt["poisson_scale_range" + sfx],
                                               gray_prob=opt["gray_noise_prob" + sfx], clip=True, rounds=False)

    def jpeg(out, rng):
        q = out.new_zeros(out.size(0)).uniform_(*rng)
        return jpeger(torch.clamp(out, 0, 1), quality=q)

    out = resize_noise(filter2D(gt_usm, kernel1), "")
    out = jpeg(out, opt["jpeg_range"])
    if np.random.uniform() < opt["second_blur_prob"]:
        out = filter2D(out, kernel2)
    out = resize_noise(out, "2")
    size = (ori_h // opt["scale"], ori_w // opt["scale"])
    if np.random.uniform() < 0.5:
        out = F.interpolate(out, size=size, mode=random.choice(["area", "bilinear", "bicubic"]))
        out = jpeg(filter2D(out, sinc_kernel), opt["jpeg_range2"])
    else:
        out = jpeg(out, opt["jpeg_range2"])
        out = F.interpolate(out, size=size, mode=random.choice(["area", "bilinear", "bicubic"]))
        out = filter2D(out, sinc_kernel)
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256, help="number of GT crops (PSNR over all, time over all after an untimed warm-up batch)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gt-size", type=int, default=512)
    ap.add_argument("--photos", default=str(PHOTOS), help="folder of JPEGs to crop (default: the 27 shared photos)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both sides (1: as in a Ray worker, robust on a shared CPU)")
    ap.add_argument("--bench-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--worker", choices=["basicsr"], help=argparse.SUPPRESS)
    ap.add_argument("--crops", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_basicsr(np.load(args.crops), args.batch)))
        return
    crops = make_crops(args.n, args.gt_size, photos=Path(args.photos))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "crops.npy")
        np.save(path, crops)
        ours = run_ours(crops, args.batch)
        cmd = [args.bench_python, __file__, "--worker", "basicsr", "--crops", path, "--batch", str(args.batch),
               "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"BasicSR worker failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
        basicsr = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({
        "device": "cpu", "threads": args.threads, "crops": args.n, "gt_size": args.gt_size, "batch": args.batch,
        "photos": args.photos, "n_photos": len(list(Path(args.photos).glob("*.jpg"))),
        "load_avg_1min": os.getloadavg()[0],
        "ours": ours, "basicsr": basicsr,
        "speedup": ours["images_per_s"] / basicsr["images_per_s"],
        "psnr_diff_db": ours["psnr_lq_bicubic"] - basicsr["psnr_lq_bicubic"],
        # standard error of the difference: the two sides draw their degradations independently
        "psnr_diff_se_db": math.hypot(ours["psnr_se"], basicsr["psnr_se"]),
    }, indent=2))


if __name__ == "__main__":
    main()

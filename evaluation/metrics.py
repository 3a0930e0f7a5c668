"""IQA metrics over pyiqa, with weights read from one local folder (DESIGN section 8).

Every metric is a pyiqa metric created with ``pyiqa.create_metric(name)`` and called on images
decoded by pyiqa's own reader, so a value in the `metrics` table equals pyiqa's own call on the
same PNGs. Learned metrics need weights; they are read from ``weights_dir``, laid out as torch
hub's cache (which is what pyiqa uses):

    <weights_dir>/pyiqa/        pyiqa's files        (LPIPS_v0.1_alex-df73285e.pth, DISTS_weights-f5e65c96.pth,
                                                      niqe_modelparameters.mat, alex_shift_tolerant.pth, ...)
    <weights_dir>/checkpoints/  torchvision backbones (alexnet-owt-7be5be79.pth, vgg16-397923af.pth, ...)
    <weights_dir>/clip/         OpenAI CLIP models    (RN50.pt, ViT-B-32.pt: clipiqa, clipscore)

pyiqa reads its folder from ``pyiqa.utils.download_util.DEFAULT_CACHE_DIR`` (torch hub's dir +
"/pyiqa", fixed at import) and torchvision and CLIP from ``torch.hub.get_dir()``: while metrics
are created, :func:`weights_folder` points both at ``weights_dir`` and, unless downloads are
allowed, turns every download (torch hub, pyiqa, CLIP's urllib, the Hugging Face hub) into a
:class:`WeightsMissing` error. Such a metric is reported with status "unavailable" and a null
value, never 0 and never a crash. Backbones that timm fetches from the Hugging Face hub (MANIQA's
ViT) come from the Hugging Face cache (``HF_HOME``) instead.

Seeding the folder from sources that work offline (:func:`seed_weights`, or
``python -m evaluation.metrics seed --weights weights``):

- NIQE: basicsr's sdist ships ``basicsr/metrics/niqe_pris_params.npz`` (the MATLAB NIQE
  pristine model); it is rewritten as pyiqa's ``niqe_modelparameters.mat``.
- ST-LPIPS (``stlpips``, ``stlpips-vgg``): stlpips-pytorch ships ``alex_shift_tolerant.pth`` and
  ``vgg_shift_tolerant.pth`` (backbone included), the very files pyiqa downloads; they are copied.
- BRISQUE: the brisque package ships a libsvm model retrained on its own features (other feature
  ranges and bias than pyiqa's ``brisque_svm_weights.pth``), so it cannot stand in for pyiqa's
  ``brisque``; it is the extra metric ``brisque_pkg``, computed by the package itself.

Everything else (lpips, dists, musiq, maniqa, clipiqa, ...) is copied in by the user from a
machine that has the files (pyiqa downloads them into ``~/.cache/torch/hub``) or downloaded
once with ``allow_download: true``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, Sequence

import numpy as np
import torch

from catalog.config import check
from catalog.resources import Resources, resource_keys
from evaluation.safe_load import TorchScriptRefused, WeightsTampered, guarded_loads

log = logging.getLogger(__name__)

# The paper's Table 1 (PSNR, SSIM, LPIPS, ManIQA, ClipIQA, MUSIQ) plus DISTS and NIQE. PSNR and
# SSIM on the Y channel: pyiqa's "psnry" and "ssim" (whose default is test_y_channel=True).
PAPER_METRICS = ("psnry", "ssim", "lpips", "dists", "maniqa", "clipiqa", "musiq", "niqe")
# metrics that are not pyiqa's: name -> what computes them
EXTRA_METRICS = {"brisque_pkg": "the brisque package's own model and features (BRISQUE(url=False).score)",
                 "rgb_mean_diff": "colour shift: max over R, G, B of |channel mean - the HQ's|, in 0-255 levels"}
BASICSR_SDIST = "basicsr==1.4.2"
NIQE_MEMBER = "basicsr/metrics/niqe_pris_params.npz"
NIQE_FILE = "niqe_modelparameters.mat"
STLPIPS_FILES = ("alex_shift_tolerant.pth", "vgg_shift_tolerant.pth")


class WeightsMissing(FileNotFoundError):
    """A metric wanted to download a file that is not in the weights folder."""


@dataclass
class EvalConfig:
    """The `evaluate:` section: which metrics, where their weights live, how they run."""

    # pyiqa metric names (pyiqa.list_models()) and the extra names in EXTRA_METRICS
    metrics: list[str] = field(default_factory=lambda: list(PAPER_METRICS))
    # torch-hub-style weights folder (pyiqa/, checkpoints/, clip/); relative to the working directory
    weights_dir: str = "weights"
    # fill the folder from offline sources first (NIQE from basicsr's sdist, ST-LPIPS from stlpips-pytorch)
    seed_offline: bool = True
    # a local basicsr sdist (.tar.gz) for NIQE; empty: `pip download` it into <weights_dir>/_sources once
    basicsr_sdist: str = ""
    # let pyiqa download missing weights (needs internet); false reports them as unavailable
    allow_download: bool = False
    # auto (cuda when available), cpu, cuda, cuda:N
    device: str = "auto"
    # images of one size scored per metric call
    batch_size: int = 4
    # rows per Ray batch handed to one Evaluator call
    rows_per_batch: int = 16
    # Evaluator actors (one set of metric models each) and their GPUs when the cluster has GPUs
    resources: Resources = field(default_factory=lambda: Resources(gpus_per_worker=1.0))

    RENAMED: ClassVar[dict[str, str]] = resource_keys(workers="actors", gpus="num_gpus_per_actor")
    # sample rows in the report's grid (LQ | bicubic | Real-ESRGAN | ours | HQ)
    grid_rows: int = 4

    def __post_init__(self):
        check(len(self.metrics) > 0 and len(set(self.metrics)) == len(self.metrics), "evaluate.metrics",
              self.metrics, "a non-empty list of distinct metric names")
        # metric names are checked against pyiqa by check_metric_names (pyiqa takes seconds to import)
        dev = self.device
        check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
              "evaluate.device", dev, "auto, cpu, cuda or cuda:N")
        check(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, "an integer >= 1")
        check(self.rows_per_batch >= 1, "evaluate.rows_per_batch", self.rows_per_batch, "an integer >= 1")
        self.resources.check("evaluate")
        check(self.grid_rows >= 0, "evaluate.grid_rows", self.grid_rows, "an integer >= 0")


def known_metrics() -> set[str]:
    import pyiqa

    return set(pyiqa.list_models()) | set(EXTRA_METRICS)


def check_metric_names(cfg: EvalConfig) -> None:
    """Preflight: every configured metric is a pyiqa name or an extra one (ConfigError otherwise)."""
    known = known_metrics()
    for name in cfg.metrics:
        check(name in known, "evaluate.metrics", name,
              f"a pyiqa metric name (pyiqa.list_models()) or one of {', '.join(EXTRA_METRICS)}")


# ---------------------------------------------------------------------------------------------
# the weights folder

@contextlib.contextmanager
def weights_folder(weights_dir: str | os.PathLike, allow_download: bool = False) -> Iterator[Path]:
    """Point pyiqa, torchvision and CLIP at ``weights_dir`` (and forbid downloads) for the block."""
    import urllib.request

    import pyiqa.utils.download_util as du

    root = Path(weights_dir).resolve()
    (root / "pyiqa").mkdir(parents=True, exist_ok=True)
    saved_hub, saved_cache = torch.hub.get_dir(), du.DEFAULT_CACHE_DIR
    saved = {"hub": torch.hub.download_url_to_file, "du": du.download_url_to_file, "url": urllib.request.urlopen}
    hf_constants = None
    try:
        import huggingface_hub.constants as hf_constants

        saved_hf = hf_constants.HF_HUB_OFFLINE
    except ImportError:
        pass

    def refuse(url, dst=None, *args, **kwargs):
        target = dst if isinstance(dst, (str, os.PathLike)) else getattr(url, "full_url", url)
        raise WeightsMissing(f"{Path(str(target)).name} is not in {root} (it would be downloaded from {url}); "
                             f"copy it there (see evaluation/metrics.py) or set evaluate.allow_download")

    torch.hub.set_dir(str(root))
    du.DEFAULT_CACHE_DIR = str(root / "pyiqa")
    if not allow_download:
        torch.hub.download_url_to_file = refuse
        du.download_url_to_file = refuse
        urllib.request.urlopen = refuse
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = True
    try:
        yield root
    finally:
        torch.hub.set_dir(saved_hub)
        du.DEFAULT_CACHE_DIR = saved_cache
        torch.hub.download_url_to_file = saved["hub"]
        du.download_url_to_file = saved["du"]
        urllib.request.urlopen = saved["url"]
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = saved_hf


def niqe_params_from_sdist(sdist: str | os.PathLike, out: str | os.PathLike) -> Path:
    """basicsr's niqe_pris_params.npz (inside its sdist) -> pyiqa's niqe_modelparameters.mat."""
    import scipy.io

    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(NIQE_MEMBER)), None)
        if member is None:
            raise FileNotFoundError(f"{sdist}: no {NIQE_MEMBER}")
        data = np.load(io.BytesIO(tar.extractfile(member).read()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mat")
    # the keys pyiqa's NIQE reads; basicsr's arrays came from the same MATLAB modelparameters.mat
    scipy.io.savemat(tmp, {"mu_prisparam": data["mu_pris_param"], "cov_prisparam": data["cov_pris_param"]})
    os.replace(tmp, out)
    return out


def download_basicsr_sdist(dest: str | os.PathLike) -> Path:
    """`pip download` basicsr's source distribution (not installed; only its NIQE file is used)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob("basicsr-*.tar.gz"))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", BASICSR_SDIST, "-d", str(dest)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    found = sorted(dest.glob("basicsr-*.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip download {BASICSR_SDIST} left no sdist in {dest}")
    return found[-1]


def seed_weights(weights_dir: str | os.PathLike, basicsr_sdist: str | os.PathLike | None = None,
                 download_sdist: bool = True) -> dict[str, str]:
    """Fill ``weights_dir`` from offline sources; returns file -> "ok" / "present" / why it is missing."""
    root = Path(weights_dir)
    (root / "pyiqa").mkdir(parents=True, exist_ok=True)
    report: dict[str, str] = {}

    niqe = root / "pyiqa" / NIQE_FILE
    if niqe.exists():
        report[NIQE_FILE] = "present"
    else:
        try:
            sdist = Path(basicsr_sdist) if basicsr_sdist else None
            if sdist is None:
                if not download_sdist:
                    raise FileNotFoundError("no basicsr sdist given")
                sdist = download_basicsr_sdist(root / "_sources")
            niqe_params_from_sdist(sdist, niqe)
            report[NIQE_FILE] = "ok"
        except (OSError, subprocess.SubprocessError, KeyError, tarfile.TarError) as e:
            report[NIQE_FILE] = f"missing: {type(e).__name__}: {str(e)[:200]}"

    try:
        import stlpips_pytorch

        src_dir = Path(stlpips_pytorch.__file__).parent / "weights" / "vST0.0"
    except ImportError:
        src_dir = None
    for name in STLPIPS_FILES:
        dst = root / "pyiqa" / name
        if dst.exists():
            report[name] = "present"
        elif src_dir is not None and (src_dir / name).exists():
            tmp = dst.with_suffix(".tmp")
            shutil.copyfile(src_dir / name, tmp)
            os.replace(tmp, dst)
            report[name] = "ok"
        else:
            report[name] = "missing: install stlpips-pytorch"
    return report


# ---------------------------------------------------------------------------------------------
# metrics

@dataclass
class Metric:
    """One loaded metric, or why it is not available."""

    name: str
    fn: Any = None  # a pyiqa InferenceModel or a callable over a list of images
    full_reference: bool = False
    lower_better: bool = False
    status: str = "ok"  # ok / unavailable / error
    error: Optional[str] = None


class BrisquePackage:
    """``brisque_pkg``: the brisque package's BRISQUE (its libsvm model and its own features).

    Follows ``BRISQUE.score`` step by step; only the features are turned into plain floats before
    scaling, because brisque 0.2.0 calls ``float()`` on 1-element arrays, which numpy >= 2.4 refuses.
    """

    full_reference = False
    lower_better = True

    def __init__(self):
        from brisque import BRISQUE

        self.model = BRISQUE(url=False)

    def score_one(self, rgb: np.ndarray) -> float:
        import cv2
        import skimage.color

        m = self.model
        gray = skimage.color.rgb2gray(m.remove_alpha_channel(rgb))
        small = cv2.resize(gray, None, fx=1 / 2, fy=1 / 2, interpolation=cv2.INTER_CUBIC)
        feats = np.concatenate((m.calculate_brisque_features(gray, kernel_size=7, sigma=7 / 6),
                                m.calculate_brisque_features(small, kernel_size=7, sigma=7 / 6)))
        feats = np.array([np.asarray(f, dtype=np.float64).reshape(-1)[0] for f in feats])
        return float(m.calculate_image_quality_score(feats))

    def __call__(self, images: Sequence[bytes]) -> list[float]:
        from PIL import Image

        return [self.score_one(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))) for b in images]


class ChannelMeanDiff:
    """``rgb_mean_diff``: how far the restoration's colour balance is from the HQ's, per image the
    largest |mean(restored_c) - mean(HQ_c)| over the three channels, in 0-255 levels (0 = same means).
    Issue 15's colour criterion: each channel's mean within 3 levels of the HQ's on average."""

    full_reference = True
    lower_better = True

    def __call__(self, images: Sequence[bytes], refs: Sequence[Optional[bytes]]) -> list[float]:
        from PIL import Image

        out = []
        for b, r in zip(images, refs):
            if r is None:
                raise ValueError("no HQ reference for rgb_mean_diff")
            x, y = (np.asarray(Image.open(io.BytesIO(bytes(d))).convert("RGB"), dtype=np.float64) for d in (b, r))
            out.append(float(np.abs(x.mean(axis=(0, 1)) - y.mean(axis=(0, 1))).max()))
        return out


def load_metric(name: str, weights_dir: str | os.PathLike, device: torch.device, allow_download: bool = False) -> Metric:
    """Create one metric; missing weights or packages give status "unavailable", never an exception."""
    try:
        if name in EXTRA_METRICS:
            fn = ChannelMeanDiff() if name == "rgb_mean_diff" else BrisquePackage()
            return Metric(name, fn, fn.full_reference, fn.lower_better)
        import pyiqa

        # pyiqa print()s "Loading pretrained model ... from <path>" per metric and actor
        with weights_folder(weights_dir, allow_download), guarded_loads(), contextlib.redirect_stdout(io.StringIO()):
            fn = pyiqa.create_metric(name, device=device)
        return Metric(name, fn, fn.metric_mode == "FR", bool(fn.lower_better))
    except (WeightsTampered, TorchScriptRefused) as e:
        return Metric(name, status="error", error=f"{type(e).__name__}: {str(e)[:500]}")
    except pickle.UnpicklingError as e:  # weights-only refused a file that holds more than tensors
        return Metric(name, status="error", error=f"refused to unpickle code from a weight file: {str(e)[:500]}")
    except (WeightsMissing, FileNotFoundError, ImportError) as e:
        return Metric(name, status="unavailable", error=f"{type(e).__name__}: {str(e)[:500]}")
    except Exception as e:  # noqa: BLE001 - e.g. Hugging Face offline errors: still "no weights here"
        offline = "offline" in str(e).lower() or "connect" in str(e).lower() or type(e).__name__.endswith("NotFoundError")
        return Metric(name, status="unavailable" if offline else "error", error=f"{type(e).__name__}: {str(e)[:500]}")


def decode(data: bytes) -> torch.Tensor:
    """PNG bytes -> (3, H, W) float in [0, 1], read exactly as pyiqa reads images (imread2tensor)."""
    from pyiqa.utils.img_util import imread2tensor

    return imread2tensor(bytes(data), rgb=True)


@torch.inference_mode()
def score(metric: Metric, restored: Sequence[bytes], hq: Sequence[Optional[bytes]], batch_size: int = 1,
          device: Optional[torch.device] = None) -> list[tuple[Optional[float], str, Optional[str]]]:
    """(value, status, error) per image pair; images of one size go through pyiqa together."""
    n = len(restored)
    if metric.status != "ok":
        return [(None, metric.status, metric.error)] * n
    if not isinstance(metric.fn, torch.nn.Module):  # an extra, non-pyiqa metric
        try:
            values = metric.fn(restored, hq) if metric.full_reference else metric.fn(restored)
            return [(v, "ok", None) for v in values]
        except Exception as e:  # noqa: BLE001
            return [(None, "error", f"{type(e).__name__}: {str(e)[:300]}")] * n
    out: list[tuple[Optional[float], str, Optional[str]]] = [(None, "error", "not scored")] * n
    groups: dict[tuple, list[int]] = {}
    tensors: dict[int, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
    for i in range(n):
        try:
            x = decode(restored[i])
            ref = None
            if metric.full_reference:
                if hq[i] is None:
                    raise ValueError("no HQ reference for a full-reference metric")
                ref = decode(hq[i])
                if ref.shape != x.shape:
                    raise ValueError(f"restored {tuple(x.shape[1:])} and HQ {tuple(ref.shape[1:])} differ in size")
            tensors[i] = (x, ref)
            groups.setdefault(tuple(x.shape), []).append(i)
        except Exception as e:  # noqa: BLE001 - a bad row, not a bad batch
            out[i] = (None, "error", f"{type(e).__name__}: {str(e)[:300]}")
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            x = torch.stack([tensors[i][0] for i in chunk])
            try:
                if metric.full_reference:
                    values = metric.fn(x, torch.stack([tensors[i][1] for i in chunk]))
                else:
                    values = metric.fn(x)
                values = values.detach().float().reshape(len(chunk), -1).mean(dim=1).cpu().tolist()
                for i, v in zip(chunk, values):
                    out[i] = (float(v), "ok", None) if np.isfinite(v) else (None, "error", f"non-finite value {v}")
            except Exception as e:  # noqa: BLE001
                for i in chunk:
                    out[i] = (None, "error", f"{type(e).__name__}: {str(e)[:300]}")
    return out


def lower_better(name: str) -> bool:
    """Whether a lower value of metric ``name`` is better (pyiqa's own flag; brisque_pkg: yes)."""
    if name in EXTRA_METRICS:
        return True
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return bool(DEFAULT_CONFIGS.get(name, {}).get("lower_better", False))


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m evaluation.metrics",
                                 description="Seed or inspect the IQA weights folder.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed", help="fill the folder without the model hubs: NIQE parameters from basicsr's sdist "
                                    "(pip downloads it from the package index), ST-LPIPS from the installed "
                                    "stlpips-pytorch; exits 1 when a file could not be made")
    s.add_argument("--weights", default="weights")
    s.add_argument("--basicsr-sdist", default=None, help="a local basicsr sdist; default: pip download it")
    c = sub.add_parser("check", help="which metrics load from the folder")
    c.add_argument("--weights", default="weights")
    c.add_argument("metrics", nargs="*", default=list(PAPER_METRICS) + ["stlpips", "brisque_pkg"])
    args = ap.parse_args(argv)
    if args.cmd == "seed":
        report = seed_weights(args.weights, args.basicsr_sdist)
        for k, v in report.items():
            print(f"{k:32s} {v}")
        missing = [k for k, v in report.items() if v.startswith("missing")]
        if missing:  # a failing exit: `make weights` must not mark itself done, so the next make retries
            print(f"seed: {len(missing)} file(s) missing ({', '.join(missing)}); the metrics that need them are "
                  "reported unavailable. Rerun with network access to the package index, or pass --basicsr-sdist.",
                  file=sys.stderr)
            return 1
        return 0
    for name in args.metrics:
        m = load_metric(name, args.weights, torch.device("cpu"))
        print(f"{name:16s} {m.status:12s} {m.error or ''}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())

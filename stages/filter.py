"""filter: keep high-resolution, sharp, good-quality, non-duplicate images; every rejection has a reason.

Per image (a Ray-free callable over batches, :class:`Filterer`): short side >= ``min_side``,
aspect ratio <= ``max_aspect``, sharpness (variance of the Laplacian of the grey image at a fixed
short side, so the number does not depend on resolution) >= ``min_sharpness``, and any number of
IQA gates through pyiqa (``iqa: {metric: {min: .., max: ..}}``). Then one global pass,
:func:`near_duplicates`, finds perceptual-hash near duplicates (Hamming distance <= threshold)
with multi-index hashing, keeping the largest, sharpest image of each group.

Reasons read ``gate:value<threshold``; SQL groups them with ``split_part(reason, ':', 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
from PIL import Image

from catalog import codec
from catalog.config import ConfigError, check
from catalog.resources import Resources, resource_keys
from evaluation.safe_load import guarded_loads

# pyiqa metrics that need no downloaded weights (they always work offline)
WEIGHT_FREE_IQA = {"psnr", "ssim", "ms_ssim", "cw_ssim", "fsim", "gmsd", "mad", "nlpd", "vif", "vsi", "piqe"}


@dataclass
class IQAGate:
    """One pyiqa metric with a threshold; an image must satisfy both bounds that are set."""

    # keep images whose score is >= min (null: no lower bound)
    min: Optional[float] = None
    # keep images whose score is <= max (null: no upper bound); e.g. NIQE, where lower is better
    max: Optional[float] = None


@dataclass
class FilterConfig:
    """The filter stage (DESIGN section 4)."""

    # minimum short side in pixels (1024 at full scale, as in SUPIR's data)
    min_side: int = 1024
    # maximum aspect ratio long/short
    max_aspect: float = 2.0
    # minimum variance of the Laplacian (grey, 0-255, at sharpness_side); 0 turns the gate off
    min_sharpness: float = 0.0
    # short side the image is resized to before measuring sharpness and IQA
    sharpness_side: int = 512
    # IQA gates: pyiqa metric name -> bounds; scores are stored as iqa_<metric> columns
    iqa: dict[str, IQAGate] = field(default_factory=dict)
    # device for IQA metrics: "auto" (cuda when present), "cpu" or "cuda"
    device: str = "auto"
    # near-duplicate threshold: Hamming distance of 64-bit pHashes; -1 turns it off
    phash_distance: int = 4
    # rows handed to one filter call (one Ray batch, one lake part)
    batch_size: int = 16
    # Filterer actors; their GPUs are requested only when IQA gates are set
    resources: Resources = field(default_factory=lambda: Resources(workers=2))

    RENAMED: ClassVar[dict[str, str]] = resource_keys(workers="workers", gpus="num_gpus")

    def __post_init__(self):
        check(self.min_side >= 1, "filter.min_side", self.min_side, "an integer >= 1")
        check(self.max_aspect >= 1.0, "filter.max_aspect", self.max_aspect, "a number >= 1")
        check(self.min_sharpness >= 0, "filter.min_sharpness", self.min_sharpness, "a number >= 0")
        check(self.sharpness_side >= 32, "filter.sharpness_side", self.sharpness_side, "an integer >= 32")
        check(self.device in ("auto", "cpu", "cuda"), "filter.device", self.device, "auto, cpu or cuda")
        check(-1 <= self.phash_distance <= 32, "filter.phash_distance", self.phash_distance, "an integer in [-1, 32]")
        check(self.batch_size >= 1, "filter.batch_size", self.batch_size, "an integer >= 1")
        self.resources.check("filter")
        for name, gate in self.iqa.items():
            check(gate.min is not None or gate.max is not None, f"filter.iqa.{name}", {"min": None, "max": None},
                  "at least one of min, max")


def check_iqa_available(cfg: FilterConfig) -> None:
    """Fail at config time, before any work, when a gate's metric is unknown or its weights are absent."""
    if not cfg.iqa:
        return
    import pyiqa

    known = set(pyiqa.list_models())
    for name in cfg.iqa:
        if name not in known:
            raise ConfigError(f"filter.iqa.{name}: unknown pyiqa metric; known: {', '.join(sorted(known))}")
        try:
            with guarded_loads():  # weights-only: a weight file in pyiqa's cache runs no code
                metric = pyiqa.create_metric(name, device="cpu")
        except Exception as e:  # pyiqa tries to download weights it does not find
            raise ConfigError(
                f"filter.iqa.{name}: the metric's weights are not available ({type(e).__name__}: {str(e)[:200]}). "
                f"Put them in pyiqa's cache (~/.cache/torch/hub/pyiqa/) or remove the gate. "
                f"Weight-free metrics: {', '.join(sorted(WEIGHT_FREE_IQA))}"
            ) from e
        if gate_is_fr(metric):
            raise ConfigError(f"filter.iqa.{name}: a full-reference metric cannot gate single images")


def gate_is_fr(metric) -> bool:
    return getattr(metric, "metric_mode", "NR") == "FR"


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D float array (0-255)."""
    g = grey.astype(np.float64)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def phash(img: Image.Image) -> str:
    """64-bit DCT perceptual hash (imagehash.phash), 16 hex digits."""
    import imagehash

    return str(imagehash.phash(img, hash_size=8))


def _resize_short(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    s = side / min(w, h)
    if s >= 1:
        return img
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


class Filterer:
    """Per-image gates over a batch of ``images`` rows -> ``filtered`` rows (one per input)."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.metrics = {}
        if cfg.iqa:
            import pyiqa

            from model.devices import resolve_device

            self.device = str(resolve_device(cfg.device))
            with guarded_loads():  # weights-only, as in evaluation/metrics.py
                self.metrics = {name: pyiqa.create_metric(name, device=self.device) for name in cfg.iqa}

    def _iqa(self, img: Image.Image) -> dict[str, float]:
        if not self.metrics:
            return {}
        import torch

        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].to(self.device)
        with torch.no_grad():
            return {name: float(m(x).item()) for name, m in self.metrics.items()}

    def one(self, data: bytes) -> dict:
        cfg = self.cfg
        out: dict = {}
        try:
            img = codec.decode_rgb(data)  # the project's one decoder: orientation, 16-bit, alpha
        except codec.DecodeError as e:
            return {"keep": False, "reason": f"{e.status}:{str(e)[:80]}"}
        w, h = img.size
        out.update(width=w, height=h)
        small = _resize_short(img, cfg.sharpness_side)
        out["sharpness"] = sharpness(np.asarray(small.convert("L"), dtype=np.float32))
        out["phash"] = phash(img)
        scores = self._iqa(small)
        out.update({f"iqa_{k}": v for k, v in scores.items()})
        reason = None
        if min(w, h) < cfg.min_side:
            reason = f"min_side:{min(w, h)}<{cfg.min_side}"
        elif max(w, h) / min(w, h) > cfg.max_aspect:
            reason = f"max_aspect:{max(w, h) / min(w, h):.3f}>{cfg.max_aspect}"
        elif out["sharpness"] < cfg.min_sharpness:
            reason = f"sharpness:{out['sharpness']:.1f}<{cfg.min_sharpness}"
        else:
            for name, gate in cfg.iqa.items():
                v = scores[name]
                if gate.min is not None and v < gate.min:
                    reason = f"iqa_{name}:{v:.4f}<{gate.min}"
                    break
                if gate.max is not None and v > gate.max:
                    reason = f"iqa_{name}:{v:.4f}>{gate.max}"
                    break
        out["keep"] = reason is None
        out["reason"] = reason
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.one(b) for b in batch["bytes"]]
        cols = ["keep", "reason", "width", "height", "sharpness", "phash"] + [f"iqa_{k}" for k in self.cfg.iqa]
        out = {"image_id": np.asarray(batch["image_id"], dtype=object), "url": np.asarray(batch["url"], dtype=object)}
        for c in cols:
            out[c] = np.asarray([r.get(c) for r in rows], dtype=object)
        out["keep"] = out["keep"].astype(bool)
        return out


def near_duplicates(image_ids: list[str], hashes: list[str], rank: list[tuple], distance: int) -> dict[str, str]:
    """Map each near-duplicate image_id to the image_id it duplicates.

    Images are visited best first (``rank`` ascending, e.g. (-pixels, -sharpness, image_id)); an
    image within ``distance`` bits of an already kept one is a duplicate of it. Candidates come
    from multi-index hashing: the 64 bits are cut into distance+1 blocks, and two hashes within
    ``distance`` bits agree exactly on at least one block (pigeonhole), so only bucket mates are
    compared.
    """
    if distance < 0:
        return {}
    nblocks = distance + 1
    bounds = [int(b) for b in np.linspace(0, 64, nblocks + 1)]
    masks = [((1 << (b - a)) - 1, 64 - b) for a, b in zip(bounds[:-1], bounds[1:])]
    buckets: list[dict[int, list[int]]] = [dict() for _ in range(nblocks)]
    kept_hash: list[int] = []
    kept_id: list[str] = []
    dup: dict[str, str] = {}
    for i in sorted(range(len(image_ids)), key=lambda i: rank[i]):
        if hashes[i] is None:
            continue
        h = int(hashes[i], 16)
        keys = [(h >> shift) & m for m, shift in masks]
        match = None
        for bi, k in enumerate(keys):
            for j in buckets[bi].get(k, ()):
                if bin(h ^ kept_hash[j]).count("1") <= distance:
                    match = j
                    break
            if match is not None:
                break
        if match is not None:
            dup[image_ids[i]] = kept_id[match]
            continue
        j = len(kept_hash)
        kept_hash.append(h)
        kept_id.append(image_ids[i])
        for bi, k in enumerate(keys):
            buckets[bi].setdefault(k, []).append(j)
    return dup

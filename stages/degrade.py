"""The degrade stage: HQ images -> rows of the `pairs` table (kind "degraded"), DESIGN section 4.

Real-ESRGAN's second-order degradation (or BSRGAN's shuffled one) of a random gt_size crop per
pair. Each pair draws every parameter from its own generator seeded by (seed, pair_id) and stores
them as JSON, so :func:`regenerate` rebuilds its LQ bytes from the row alone. The degradations
themselves are the library degradations/ (the same code degrades batches on the fly in training);
this stage decodes, crops and writes the rows.

    degrader = Degrader(DegradeConfig(gt_size=256))
    pairs = degrader({"image_id": ids, "bytes": data})   # Ray Data numpy batch in and out

Imports no Ray: pipelines/ calls it with map_batches.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from catalog import codec
from catalog.batches import numpy_batch
from catalog.schemas import PAIR_COLUMNS, PAIR_DTYPES, PAIRS, PAIRS_PNG_LEVEL, pair_id_of
from degradations import (DegradeConfig, degrade_batch, degrade_pairs, degrade_target, draw_params, ops,
                          summarize_params)

__all__ = [
    "DegradeConfig",
    "Degrader",
    "decode_rgb",
    "degrade_batch",
    "degrade_files",
    "degrade_pairs",
    "draw_params",
    "preview_grid",
    "regenerate",
    "summarize_params",
]

KIND = "degraded"


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image -> (H, W, 3) uint8, EXIF orientation applied. Raises on corrupt data."""
    return codec.decode_array(data)


def _row(pair_id: str, image_id: str, caption: Any, cfg: DegradeConfig, status: str, error: str | None = None,
         hq: bytes | None = None, lq: bytes | None = None, params: str | None = None) -> dict[str, Any]:
    return {"pair_id": pair_id, "image_id": image_id, "kind": KIND, "status": status, "error": error,
            "hq": hq, "lq": lq, "scale": cfg.scale, "seed": cfg.seed, "params": params, "caption": caption}


class Degrader:
    """Stage callable: a batch of images -> `variants_per_image` pairs rows per image.

    Input columns: image_id, bytes (original encoded image), caption (optional). Output: the
    `pairs` columns. A corrupt image gives status "decode_error", one smaller than gt_size
    "too_small", an unexpected failure "error"; the batch never fails as a whole.
    """

    def __init__(self, cfg: DegradeConfig | None = None, device: str | torch.device = "cpu"):
        self.cfg = cfg or DegradeConfig()
        self.device = torch.device(device)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg = self.cfg
        n = len(batch["image_id"])
        captions = batch["caption"] if "caption" in batch else [None] * n
        rows: list[dict[str, Any]] = []
        todo: list[tuple[int, np.ndarray, dict[str, Any]]] = []  # (row index, HQ crop, params)
        for i in range(n):
            image_id, caption = str(batch["image_id"][i]), captions[i]
            caption = None if caption is None or (isinstance(caption, float) and np.isnan(caption)) else str(caption)
            try:
                img = decode_rgb(batch["bytes"][i])
            except Exception as e:  # noqa: BLE001 - any decoder failure is a row status
                img, status, error = None, "decode_error", f"{type(e).__name__}: {e}"
            else:
                h, w = img.shape[:2]
                status, error = ("ok", None) if min(h, w) >= cfg.gt_size else (
                    "too_small", f"image is {w}x{h}, smaller than gt_size {cfg.gt_size}")
            for v in range(cfg.variants_per_image):
                pair_id = pair_id_of(image_id, KIND, v)
                rows.append(_row(pair_id, image_id, caption, cfg, status, error))
                if status == "ok":
                    p = draw_params(cfg, pair_id, image_size=img.shape[:2])
                    p["png_compress_level"] = PAIRS_PNG_LEVEL
                    top, left = p["crop"]
                    todo.append((len(rows) - 1, img[top : top + cfg.gt_size, left : left + cfg.gt_size], p))
        self._degrade(rows, todo)
        return numpy_batch({c: [r[c] for r in rows] for c in PAIR_COLUMNS}, PAIR_DTYPES)

    def _degrade(self, rows: list[dict[str, Any]], todo: list[tuple[int, np.ndarray, dict[str, Any]]]) -> None:
        for idx, crop, p in todo:
            try:
                hq = ops.from_uint8(crop, self.device)  # (1, 3, gt, gt)
                target, lq = degrade_pairs(hq, [p])
                rows[idx].update(hq=ops.encode_png(target), lq=ops.encode_png(lq), params=json.dumps(p, sort_keys=True))
            except Exception as e:  # noqa: BLE001 - one bad sample must not sink the batch
                rows[idx].update(status="error", error=f"{type(e).__name__}: {e}")


def degrade_files(paths: Sequence[str | Path], cfg: DegradeConfig | None = None,
                  captions: Sequence[Optional[str]] | None = None) -> pa.Table:
    """`pairs` rows (kind degraded) of the image files at ``paths``, as the degrade stage makes them
    (``cfg.variants_per_image`` per image; image_id from the file's bytes), for benchmarks and tests
    that need pairs without a crawl. ``captions``: one per path (default none)."""
    from catalog.schemas import image_id_of

    data = [Path(p).read_bytes() for p in paths]
    caps = list(captions) if captions is not None else [None] * len(data)
    if len(caps) != len(data):
        raise ValueError(f"captions: got {len(caps)} for {len(data)} paths")
    out = Degrader(cfg)({"image_id": np.array([image_id_of(d) for d in data], dtype=object),
                         "bytes": np.array(data, dtype=object), "caption": np.array(caps, dtype=object)})
    return pa.table({c: pa.array(list(out[c]), PAIRS.field(c).type) for c in PAIR_COLUMNS}, schema=PAIRS)


def regenerate(row: Mapping[str, Any], device: str | torch.device = "cpu") -> bytes:
    """The LQ PNG bytes of a `pairs` row, rebuilt from its stored HQ and params alone."""
    p = json.loads(row["params"])
    target = ops.from_uint8(decode_rgb(row["hq"]), device)
    return ops.encode_png(degrade_target(target, p), p.get("png_compress_level", PAIRS_PNG_LEVEL))


def preview_grid(pairs: Mapping[str, np.ndarray], n: int = 16, cell: int = 128) -> Image.Image:
    """A grid of up to n ok pairs, one per row: LQ (upscaled) | HQ. For MLflow artifacts."""
    from evaluation.grids import make_grid

    rows = []
    for status, lq, hq in zip(pairs["status"], pairs["lq"], pairs["hq"]):
        if status == "ok" and len(rows) < n:
            rows.append([Image.open(io.BytesIO(lq)).convert("RGB"), Image.open(io.BytesIO(hq)).convert("RGB")])
    return make_grid(rows, ["LQ (bicubic up)", "HQ"], cell)

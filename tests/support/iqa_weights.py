"""Test helper: an IQA weights folder seeded from offline sources, and demo-like degraded pairs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.metrics import NIQE_FILE, download_basicsr_sdist, seed_weights

# where basicsr's sdist is kept between test runs (pip download'ed once, never installed)
SOURCES = Path(os.environ.get("SUPIR_SOURCES", Path.home() / ".cache" / "supir" / "sources"))


def seeded_weights(folder: Path) -> tuple[Path, dict[str, str]]:
    """Seed ``folder``; NIQE needs basicsr's sdist (cached in SOURCES; fetched with pip when missing)."""
    try:
        sdist = download_basicsr_sdist(SOURCES)
    except Exception as e:  # noqa: BLE001 - no registry: NIQE stays unavailable, the report says why
        sdist = None
        print(f"basicsr sdist not available: {e}")
    report = seed_weights(folder, sdist, download_sdist=False)
    return folder, report


def has_niqe(folder: Path) -> bool:
    return (folder / "pyiqa" / NIQE_FILE).exists()


def demo_pairs(photos, n: int, gt_size: int = 256, seed: int = 0, short_side: int = 0):
    """Degraded pairs of real photos the way the demo makes them (stages/degrade.py, Real-ESRGAN x4).

    ``short_side`` > 0 first resizes each photo (Lanczos) so that the gt_size crop holds a whole
    scene instead of a patch of sky or leaf, as a demo photo resized for a small model would.
    """
    import io

    from stages.degrade import Degrader, DegradeConfig

    def read(p):
        if not short_side:
            return Path(p).read_bytes()
        img = Image.open(p).convert("RGB")
        k = short_side / min(img.size)
        img = img.resize((round(img.width * k), round(img.height * k)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    data = np.empty(n, dtype=object)
    data[:] = [read(p) for p in photos[:n]]
    ids = np.array([f"img{i}" for i in range(n)], dtype=object)
    out = Degrader(DegradeConfig(gt_size=gt_size, seed=seed))({"image_id": ids, "bytes": data})
    assert all(s == "ok" for s in out["status"]), list(out["error"])
    return out


def png_size(data: bytes) -> tuple[int, int]:
    import io

    return Image.open(io.BytesIO(data)).size

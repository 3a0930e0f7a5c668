"""Helpers for the training tests and benchmark: a lake with real degraded pairs of the sample photos."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import pyarrow as pa

from tests.support import ROOT


def make_pairs(paths: Sequence[Path], gt_size: Optional[int] = None, scale: Optional[int] = None, variants: int = 1,
               captions: Optional[Sequence[str]] = None, degrade: Any = None) -> pa.Table:
    """`pairs` rows (kind degraded) of the images at ``paths`` (stages.degrade.degrade_files) with
    ``degrade`` (a run's DegradeConfig; default: 128 px, 4x), ``variants`` per image, ``gt_size`` /
    ``scale`` in place of its own where given, and a caption per photo from its file name."""
    from dataclasses import replace

    from stages.degrade import DegradeConfig, degrade_files

    sizes = {k: v for k, v in (("gt_size", gt_size), ("scale", scale)) if v is not None}
    cfg = replace(degrade or DegradeConfig(gt_size=128, scale=4), variants_per_image=variants, **sizes)
    caps = list(captions) if captions is not None else [f"a photo {Path(p).stem.split('_')[0].lower()}" for p in paths]
    return degrade_files(paths, cfg, caps)


def make_lake(root: Path, paths: Sequence[Path], **kwargs: Any):
    from catalog.lake import Lake

    lake = Lake(str(root))
    lake.write_part("pairs", make_pairs(paths, **kwargs))
    return lake


def sample_photos() -> list[Path]:
    return sorted((ROOT / "data" / "samples").glob("*.jpg"))

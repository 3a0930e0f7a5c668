"""The caption join, in one place: each pair's text is its own caption (negatives carry the negative
prompt), else its image's row in the `captions` table, else a default.

Training (pipelines/train.py), stage 0 (pipelines/prior.py), restore and the ablations
(pipelines/common.py's part reader) all join through :func:`caption_map` and :func:`fill_missing`;
it lives in catalog/ so that stages/ (which may not import pipelines/) could use it too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import pyarrow as pa
import pyarrow.compute as pc

from catalog import layout

if TYPE_CHECKING:
    from catalog.lake import Lake


def caption_map(lake: "Lake") -> dict[str, str]:
    """image_id -> caption of the ok rows of `captions` (empty without the table)."""
    if not lake.exists(layout.CAPTIONS):
        return {}
    t = lake.read(layout.CAPTIONS, columns=["image_id", "caption", "status"])
    t = t.filter(pc.equal(t.column("status"), "ok"))
    return dict(zip(t.column("image_id").to_pylist(), t.column("caption").to_pylist()))


def fill_missing(block: pa.Table, column: str, by: str, values: dict, default: Optional[str] = None) -> pa.Table:
    """``block`` with each row's missing or blank string ``column`` taken from ``values[row[by]]``
    (else ``default``); the column is added when the block has none."""
    have = block.column(column).to_pylist() if column in block.column_names else [None] * block.num_rows
    filled = pa.array([h if isinstance(h, str) and h.strip() else values.get(str(k)) or default
                       for h, k in zip(have, block.column(by).to_pylist())], pa.string())
    if column in block.column_names:
        return block.set_column(block.schema.get_field_index(column), column, filled)
    return block.append_column(column, filled)

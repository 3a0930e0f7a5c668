"""Arrow schemas of every lake table (DESIGN section 3), defined once.

Rows are keyed by content: ``image_id`` is the sha256 of the original encoded image bytes (hex);
``pair_id`` is derived from (image_id, kind, variant). Every stage keeps rejected or failed rows
with a ``status`` and a reason instead of dropping them.

Tables may carry more columns than listed here only where ``EXTRA_PREFIXES`` allows it (for
example ``iqa_<metric>`` float columns in ``filtered``).
"""
from __future__ import annotations

import hashlib

import pyarrow as pa

from catalog import layout

TS = pa.timestamp("us", tz="UTC")

SOURCES = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("alt_text", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # the source spec this row came from
        pa.field("row", pa.int64(), nullable=False),  # position in the normalised source list
        # True: made from a folder, glob, image file or dataset the user named, so the Fetcher may
        # read it from local disk; False/null: a URL-list row, fetched over http(s) only
        pa.field("local", pa.bool_()),
    ]
)

# status values of `images`
IMAGE_STATUSES = (
    "ok",
    "http_error",
    "timeout",
    "connection_error",
    "not_image",
    "too_large",
    "decode_error",
    "decompression_bomb",
    "duplicate",
    "forbidden_address",
    "too_many_redirects",
    "bad_url",
    "opted_out",  # X-Robots-Tag says noai / noimageai / noindex / noimageindex (crawl.opt_out_directives)
)

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string()),  # sha256 hex of `bytes`; null when nothing was fetched
        pa.field("url", pa.string(), nullable=False),
        pa.field("alt_text", pa.string()),
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("num_bytes", pa.int64()),
        pa.field("bytes", pa.binary()),  # original encoded image, untouched
        pa.field("fetched_at", TS),
        pa.field("seconds", pa.float64()),
    ]
)

FILTERED = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),  # null when kept; e.g. "min_side", "near_duplicate_of:<id>"
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("sharpness", pa.float64()),
        pa.field("phash", pa.string()),  # 64-bit DCT hash, 16 hex digits
    ]
)

CAPTIONS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("captioner", pa.string(), nullable=False),  # model id/path or "alt-text"
        pa.field("prompt", pa.string()),
        pa.field("params", pa.string()),  # JSON of the generation parameters
        pa.field("status", pa.string(), nullable=False),  # ok / decode_error / error
        pa.field("error", pa.string()),
        pa.field("seconds", pa.float64()),
        pa.field("new_tokens", pa.int64()),
    ]
)

PAIRS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # degraded / negative
        pa.field("status", pa.string(), nullable=False),  # ok / decode_error / too_small / error
        pa.field("error", pa.string()),
        pa.field("hq", pa.binary()),  # PNG
        pa.field("lq", pa.binary()),  # PNG
        pa.field("scale", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("params", pa.string()),  # JSON of every drawn degradation parameter
        pa.field("caption", pa.string()),
    ]
)
# a `pairs` numpy batch as the degrade and negatives stages return it: every column in schema
# order, the integer ones typed (catalog.batches.numpy_batch's dtypes; the rest are object arrays)
PAIR_COLUMNS = tuple(PAIRS.names)
PAIR_DTYPES = {f.name: f.type.to_pandas_dtype() for f in PAIRS if pa.types.is_integer(f.type)}
# zlib level of the PNGs in pairs.hq / pairs.lq: 1 is ~4x faster than Pillow's 6, and Parquet's
# zstd compresses on top
PAIRS_PNG_LEVEL = 1

RESTORATIONS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("restored", pa.binary()),  # PNG
        pa.field("params", pa.string()),  # JSON of the sampler parameters
        pa.field("seconds", pa.float64()),
    ]
)

METRICS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("degradation", pa.string()),
        pa.field("split", pa.string()),  # "heldout" / "train" (stages/split.py); null: pairs of no known image
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),  # null when status != ok, never 0 for "missing"
        pa.field("status", pa.string(), nullable=False),  # ok / unavailable / error
        pa.field("error", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    layout.SOURCES: SOURCES,
    layout.IMAGES: IMAGES,
    layout.FILTERED: FILTERED,
    layout.CAPTIONS: CAPTIONS,
    layout.PAIRS: PAIRS,
    layout.RESTORATIONS: RESTORATIONS,
    # baseline restorations (bicubic, Real-ESRGAN) of the same pairs, written by the baselines stage
    layout.BASELINES: RESTORATIONS,
    layout.METRICS: METRICS,
}

# extra columns a table may carry beyond its schema: prefix -> arrow type
EXTRA_PREFIXES: dict[str, dict[str, pa.DataType]] = {
    layout.FILTERED: {"iqa_": pa.float64()},
}


def image_id_of(data: bytes) -> str:
    """The content key of an image: sha256 of its original encoded bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def pair_id_of(image_id: str, kind: str, variant: int | str = 0) -> str:
    """The key of a training pair: stable in (image_id, kind, variant), 32 hex digits."""
    return hashlib.sha256(f"{image_id}:{kind}:{variant}".encode()).hexdigest()[:32]

"""The crawl stage (DESIGN section 4): source rows in, one `images` row with a status out.

- :class:`CrawlConfig`: the ``crawl:`` section of a run config (stages/crawl_config.py).
- :func:`read_sources` (in stages/crawl_sources.py): URL lists, folders, globs, single URLs and
  Hugging Face datasets normalised into the ``sources`` table.
- :class:`Fetcher`: a Ray Data callable, ``Fetcher(cfg)(batch) -> batch``, that downloads or reads
  each row with a thread pool and checks it (byte cap, content type, magic bytes, pixel-count
  bomb guard before decoding, full decode). It never raises for a bad URL; every input row
  comes back with a ``status`` from catalog.schemas.IMAGE_STATUSES.
- :func:`mark_duplicates` / :func:`apply_duplicates`: exact duplicates by ``image_id``, applied
  over the whole table after fetching (the first row in ``row`` order stays ``ok``).

Imports no Ray: a test calls ``Fetcher(cfg)(batch)`` directly.
"""
from __future__ import annotations

import io
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from catalog.schemas import IMAGES, image_id_of
from stages.crawl_config import CrawlConfig
from stages.crawl_http import FetchError, HttpClient
from stages.crawl_sources import (
    HF_SCHEME,
    open_hf_image,
    parse_hf_ref,
    read_local_file,
    read_sources,
    under_roots,
)

__all__ = [
    "CrawlConfig",
    "Fetcher",
    "apply_duplicates",
    "images_table",
    "inspect_image",
    "mark_duplicates",
    "read_sources",
    "sniff_format",
]


def sniff_format(head: bytes) -> str | None:
    """The image format from the first bytes (Pillow's name), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def inspect_image(data: bytes, cfg: CrawlConfig) -> tuple[int, int, str]:
    """(width, height, format) of an encoded image after decoding all of it, or raise FetchError.

    The pixel count is checked from the header before any pixel is decoded, so a 20000x20000
    PNG of a few KB is refused without allocating it.
    """
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise FetchError("not_image", "no known image signature in the first bytes")  # content never quoted
    if fmt not in cfg.formats:
        raise FetchError("not_image", f"format {fmt} not in crawl.formats")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            width, height = im.size
            if width * height > cfg.max_pixels:
                raise FetchError("decompression_bomb", f"{width}x{height} over max_pixels {cfg.max_pixels}")
            if fmt == "JPEG" and cfg.fast_jpeg_verify:
                im.draft(im.mode, (max(width // 8, 1), max(height // 8, 1)))
            im.load()  # decodes the whole stream: a truncated or corrupt file fails here
    except FetchError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own limit, when max_pixels is above it
        raise FetchError("decompression_bomb", str(e)[:300]) from None
    except Exception as e:  # noqa: BLE001 - any codec failure is a property of the data
        raise FetchError("decode_error", f"{type(e).__name__}: {e}"[:300]) from None
    return width, height, fmt


@dataclass
class _Result:
    status: str
    error: str | None = None
    http_status: int | None = None
    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    fetched_at: datetime | None = None
    seconds: float = 0.0


class Fetcher:
    """Ray Data callable: ``sources`` rows (url, alt_text, source, row) -> ``images`` rows.

    ``__call__`` takes and returns a numpy batch (dict of 1-D arrays; strings and bytes as object
    arrays, nullable integers as object arrays holding None, ``fetched_at`` as naive UTC
    datetime64[us]). Given a ``pyarrow.Table`` (Ray's ``batch_format="pyarrow"``) it returns one
    with the exact ``IMAGES`` schema, which keeps column types stable across batches (a numpy
    column that is all None has no type of its own).
    """

    def __init__(self, cfg: CrawlConfig):
        self.cfg = cfg
        self._http: HttpClient | None = None
        self._hf_cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # sockets, locks and datasets stay behind when pickled for Ray
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cfg"])

    @property
    def http(self) -> HttpClient:
        with self._lock:
            if self._http is None:
                self._http = HttpClient(self.cfg)
            return self._http

    def fetch_one(self, url: str, local: bool = False) -> _Result:
        """Download or read one URL and check it; never raises.

        ``local``: the row was made by read_sources from a local spec the user named, so file://
        and hfds:// may be read; otherwise only under ``crawl.local_roots``, else bad_url."""
        start = time.perf_counter()
        fetched_at = datetime.now(timezone.utc)
        http_status = None
        try:
            scheme = urlsplit(url).scheme.lower() if url else ""
            if scheme in ("http", "https"):
                download = self.http.get(url)
                data, http_status = download.data, download.http_status
            elif scheme == "file":
                data = self._read_file(url, local)
            elif scheme == HF_SCHEME:
                if not local and not under_roots(parse_hf_ref(url)[0], self.cfg.local_roots):
                    raise FetchError("bad_url", "a dataset reference in a URL list is not read (only http(s); "
                                                "see crawl.local_roots)")
                data = open_hf_image(url, self._hf_cache, self._lock, self.cfg.max_bytes, self.cfg.local_roots)
            else:
                raise FetchError("bad_url", f"unsupported URL scheme {scheme!r}" if scheme else "not a URL")
            if len(data) > self.cfg.max_bytes:
                raise FetchError("too_large", f"{len(data)} bytes > max_bytes {self.cfg.max_bytes}", http_status)
            width, height, fmt = inspect_image(data, self.cfg)
            result = _Result("ok", None, http_status, data, width, height, fmt)
        except FetchError as e:
            result = _Result(e.status, e.error, e.http_status if e.http_status is not None else http_status)
        except Exception as e:  # noqa: BLE001 - a bug must not lose the row; it is kept with its error
            result = _Result("connection_error", f"unexpected {type(e).__name__}: {e}"[:300], http_status)
        result.fetched_at = fetched_at
        result.seconds = time.perf_counter() - start
        return result

    def _read_file(self, url: str, local: bool) -> bytes:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise FetchError("bad_url", f"file URL with a remote host: {url}")
        path = Path(url2pathname(parts.path))
        if not local and not under_roots(path, self.cfg.local_roots):
            raise FetchError("bad_url", "a file:// URL in a URL list is not read (only http(s); "
                                        "see crawl.local_roots)")
        return read_local_file(path, self.cfg.max_bytes)

    def __call__(self, batch: Mapping[str, Any] | pa.Table) -> dict[str, np.ndarray] | pa.Table:
        if isinstance(batch, pa.Table):  # Ray's batch_format="pyarrow": exact IMAGES schema out
            return self.fetch_table(batch)
        urls = [("" if u is None else str(u)) for u in batch["url"]]
        n = len(urls)
        local = [v is True or v is np.True_ for v in batch["local"]] if "local" in batch else [False] * n
        if n <= 1 or self.cfg.threads == 1:
            results = [self.fetch_one(u, t) for u, t in zip(urls, local)]
        else:
            with ThreadPoolExecutor(min(self.cfg.threads, n), thread_name_prefix="crawl") as pool:
                results = list(pool.map(self.fetch_one, urls, local))

        def column(name: str) -> np.ndarray:
            values = batch.get(name)
            return np.array(list(values) if values is not None else [None] * n, dtype=object)

        def obj(values: list) -> np.ndarray:
            out = np.empty(n, dtype=object)
            out[:] = values
            return out

        return {
            "image_id": obj([image_id_of(r.data) if r.data is not None else None for r in results]),
            "url": obj(urls),
            "alt_text": column("alt_text"),
            "source": column("source"),
            "row": np.array([int(r) for r in batch["row"]], dtype=np.int64) if "row" in batch
            else np.full(n, -1, dtype=np.int64),
            "status": obj([r.status for r in results]),
            "error": obj([r.error for r in results]),
            "http_status": obj([r.http_status for r in results]),
            "width": obj([r.width for r in results]),
            "height": obj([r.height for r in results]),
            "format": obj([r.format for r in results]),
            "num_bytes": obj([len(r.data) if r.data is not None else None for r in results]),
            "bytes": obj([r.data for r in results]),
            "fetched_at": np.array([r.fetched_at.replace(tzinfo=None) for r in results], dtype="datetime64[us]"),
            "seconds": np.array([r.seconds for r in results], dtype=np.float64),
        }

    def fetch_table(self, sources: pa.Table) -> pa.Table:
        """Arrow in (SOURCES columns), Arrow out with the exact IMAGES schema."""
        return images_table(self(sources.to_pydict()))


def images_table(batch: Mapping[str, Any]) -> pa.Table:
    """A Fetcher output batch (numpy or lists) as an Arrow table with the exact IMAGES schema.

    ``fetched_at`` may be naive (taken as UTC, as Fetcher returns it) or timezone-aware.
    """
    arrays = []
    for f in IMAGES:
        values = batch[f.name]
        if f.name == "fetched_at":
            arr = pa.array(np.asarray(values, dtype="datetime64[us]")) if len(values) else pa.array([], pa.timestamp("us"))
            arrays.append(arr.cast(f.type))
        else:
            arrays.append(pa.array(list(values), type=f.type))
    return pa.Table.from_arrays(arrays, schema=IMAGES)


def mark_duplicates(images: pa.Table | Mapping[str, Any]) -> dict[int, int]:
    """Exact duplicates among ``ok`` rows: {duplicate row: row of its first occurrence}.

    Needs the columns ``row``, ``image_id`` and ``status`` of the whole crawl (not one batch).
    The first occurrence in ``row`` order stays ``ok``; use the result with :func:`apply_duplicates`
    (or ``row in result``) to turn the others into ``duplicate``.
    """
    if isinstance(images, pa.Table):
        images = images.select(["row", "image_id", "status"]).to_pydict()
    order = sorted(
        (int(r), i) for i, (r, s) in enumerate(zip(images["row"], images["status"])) if s == "ok"
    )
    first: dict[str, int] = {}
    dups: dict[int, int] = {}
    for r, i in order:
        key = images["image_id"][i]
        if key not in first:
            first[key] = r
        elif first[key] != r:  # a second copy of the kept row itself is never its own duplicate
            dups[r] = first[key]
    return dups


def apply_duplicates(images: pa.Table, dups: Mapping[int, int]) -> pa.Table:
    """Rows in ``dups`` become status ``duplicate``, error ``duplicate_of:<row>``, bytes null.

    ``image_id`` stays, so SQL can join a duplicate to the row that was kept.
    """
    if not dups:
        return images
    rows = images.column("row").to_pylist()
    hit = [r in dups for r in rows]
    status = [("duplicate" if h else s) for h, s in zip(hit, images.column("status").to_pylist())]
    error = [(f"duplicate_of:{dups[r]}" if h else e) for h, r, e in zip(hit, rows, images.column("error").to_pylist())]
    keep_bytes = pa.array([not h for h in hit])
    data = images.column("bytes")
    data = pc.if_else(keep_bytes, data, pa.nulls(len(rows), data.type))
    out = images
    for name, values in (("status", pa.array(status, pa.string())), ("error", pa.array(error, pa.string())),
                         ("bytes", data)):
        out = out.set_column(out.schema.get_field_index(name), out.schema.field(name), values)
    return out


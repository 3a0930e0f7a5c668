"""The ``crawl:`` section of a run config: where the crawl stage (stages/crawl.py) reads its
sources and how its fetcher and HTTP client (stages/crawl_http.py, stages/crawl_sources.py) download
and check each image. A module of its own so that all three import it without a circle."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from catalog.config import check
from catalog.resources import Resources, resource_keys

# magic bytes -> Pillow format name
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass
class CrawlConfig:
    """Where the crawl reads its sources and how it downloads and checks each image."""

    sources: list[str] = field(default_factory=list)
    """Source specs, read in order: URL lists (.txt one URL a line, .csv/.tsv, .parquet), image
    folders, globs, single file:// or http(s):// URLs, and ``hf:<hub name or local folder>``
    Hugging Face datasets (a folder written by ``save_to_disk`` is recognised without ``hf:``)."""
    url_column: str = "url"
    """Column holding the URL in csv/parquet lists and Hugging Face datasets."""
    alt_text_column: str = "alt_text"
    """Column holding the alt text / caption, when present (LAION: "TEXT" or "caption")."""
    hf_split: str = "train"
    """Split to read from Hugging Face datasets."""
    hf_image_column: str = "image"
    """Image column of a Hugging Face dataset without a url column."""
    threads: int = 16
    """Download threads inside one fetcher (one Ray task or actor)."""
    timeout_s: float = 10.0
    """Connect timeout, and longest wait for the next bytes of a response."""
    download_timeout_s: float = 60.0
    """Longest time one attempt may take from request to last byte, status line and headers
    included (slow-drip guard: a watchdog shuts the socket when it passes)."""
    retries: int = 2
    """Extra attempts after a 5xx, 429, timeout or broken connection (never after a 4xx)."""
    backoff_s: float = 0.5
    """Wait before retry k (0-based) is backoff_s * 2**k, times a random factor in [1, 1.5) so
    that threads and workers do not retry in step; at least the server's Retry-After."""
    max_bytes: int = 32 * 1024 * 1024
    """Largest accepted body (bytes); larger is too_large, by Content-Length or while streaming."""
    max_pixels: int = 80_000_000
    """Largest width*height, checked from the header before decoding (decompression bomb guard).
    Kept under Pillow's own warning threshold (89.5 MP) so no warning fires below it."""
    max_redirects: int = 5
    """Redirect hops followed before too_many_redirects."""
    local_roots: list[str] = field(default_factory=list)
    """Opt-in: folders from which rows of URL lists may read ``file://`` URLs and ``hfds://``
    datasets (paths resolved, so ``..`` and symlinks cannot leave them). Empty (the default): URL
    lists are http(s) only; local files are read only from the folders, globs, image files and
    ``hf:`` datasets named in ``sources``."""
    allow_private_addresses: bool = False
    """Allow private, loopback, link-local and reserved addresses (tests serve from loopback)."""
    user_agent: str = "supir-pipeline/0.1 (SUPIR image restoration research crawler; honours X-Robots-Tag noai)"
    """User-Agent header of every request: name the project (and a contact URL when you run a
    public crawl). Its first word before "/" is the token X-Robots-Tag lines may address
    (``supir-pipeline: noai``)."""
    opt_out_directives: list[str] = field(default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])
    """X-Robots-Tag directives that make a response ``opted_out`` (img2dataset's defaults), for
    lines without a user-agent token or addressed to ours; [] ignores the header."""
    max_retry_after_s: float = 60.0
    """Longest Retry-After (429, 503) a download waits for; a longer one gives up at once
    (http_error, the wait in the error) instead of holding a download thread."""
    fast_jpeg_verify: bool = True
    """Verify JPEGs with libjpeg's 1/8-scale decode: every entropy-coded block is still decoded,
    so truncated or corrupt streams fail exactly as in a full decode, at about half the CPU (only
    the inverse DCT and colour conversion run at 1/8 size). False: decode at full size."""
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    """Accepted image formats, by magic bytes; anything else is not_image."""
    shard_rows: int = 1000
    """Source rows per crawl task; one task's output is one Parquet shard (resume unit)."""
    resources: Resources = field(default_factory=lambda: Resources(workers=2))
    """Fetcher actors (each with ``threads`` download threads) and the CPUs Ray reserves for each
    (decoding is the CPU work; downloads mostly wait); read by pipelines/ only."""

    RENAMED: ClassVar[dict[str, str]] = resource_keys(workers="workers", cpus="cpus_per_worker")

    def __post_init__(self) -> None:
        check(isinstance(self.sources, list) and all(isinstance(s, str) and s.strip() for s in self.sources),
              "crawl.sources", self.sources, "a list of non-empty source specs")
        check(isinstance(self.local_roots, list) and all(isinstance(s, str) and s.strip() for s in self.local_roots),
              "crawl.local_roots", self.local_roots, "a list of folder paths")
        for name in ("url_column", "alt_text_column", "hf_split", "hf_image_column", "user_agent"):
            value = getattr(self, name)
            check(isinstance(value, str) and value != "", f"crawl.{name}", value, "a non-empty string")
        for name in ("threads", "max_bytes", "max_pixels", "shard_rows"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"crawl.{name}", value, "an integer >= 1")
        for name in ("retries", "max_redirects"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, f"crawl.{name}", value, "an integer >= 0")
        check(isinstance(self.opt_out_directives, list) and all(isinstance(d, str) and d.strip() and d == d.lower()
                                                                 for d in self.opt_out_directives),
              "crawl.opt_out_directives", self.opt_out_directives, "a list of lower-case directives, e.g. [noai]")
        self.resources.check("crawl")
        for name in ("timeout_s", "download_timeout_s", "max_retry_after_s"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"crawl.{name}", value,
                  "a finite number > 0")
        check(isinstance(self.backoff_s, (int, float)) and math.isfinite(self.backoff_s) and self.backoff_s >= 0,
              "crawl.backoff_s", self.backoff_s, "a finite number of seconds >= 0")
        check(isinstance(self.formats, list) and len(self.formats) > 0 and set(self.formats) <= set(FORMATS),
              "crawl.formats", self.formats, f"a non-empty list from {list(FORMATS)}")

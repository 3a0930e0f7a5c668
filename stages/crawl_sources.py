"""Source specs -> the ``sources`` table (url, alt_text, source, row).

A spec in ``crawl.sources`` is one of, tried in this order:

- ``http://...`` / ``https://...`` / ``file://...``: one image URL.
- ``hf:<name or folder>``: a Hugging Face dataset through the ``datasets`` package: a hub name,
  a folder written by ``save_to_disk``, or a folder of data files (parquet, ...) that
  ``load_dataset`` reads. Split ``crawl.hf_split``.
- a folder written by ``Dataset.save_to_disk`` (it has ``state.json`` or ``dataset_dict.json``):
  the same as ``hf:<folder>``.
- a glob (``*``, ``?``, ``[``): every match, sorted, read as its own spec.
- a folder: every image file in it and below (by extension), sorted, as file:// URLs.
- a file: ``.txt`` (one URL a line; blank lines and ``#`` comments skipped), ``.csv``/``.tsv``
  and ``.parquet`` (column ``crawl.url_column``, optional ``crawl.alt_text_column``), or an image
  file (one file:// URL).

A Hugging Face dataset with a ``crawl.url_column`` column is a URL list. One without it but with
an image column (``crawl.hf_image_column``) yields one row per example whose url is a reference
``hfds://<dataset>?split=<split>&column=<column>#<index>``; the Fetcher resolves it by opening the
dataset (memory-mapped, once per fetcher) and reading that cell's encoded bytes, so images are
never decoded or copied into ``sources``.

``local`` marks the rows that may be read from the local disk: those made here from a spec the
user named as a folder, glob, image file, file:// URL or Hugging Face image dataset. Rows of URL
lists (and URL columns) are untrusted: the Fetcher reads them over http(s) only, unless their
file:// path lies under one of ``crawl.local_roots`` (an explicit opt-in).

``row`` numbers all rows of all specs in order from 0. A missing file, an unknown extension, a
glob without matches or a list without the url column raises ConfigError naming the spec.
"""
from __future__ import annotations

import glob
import os
import stat
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from catalog.config import ConfigError
from catalog.schemas import SOURCES
from stages.crawl_config import CrawlConfig
from stages.crawl_http import FetchError

HF_SCHEME = "hfds"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
LIST_SUFFIXES = {".txt", ".csv", ".tsv", ".parquet"}


def read_sources(cfg: CrawlConfig) -> pa.Table:
    """All source specs of ``cfg`` as one table with the SOURCES schema, rows numbered in order."""
    urls: list[str] = []
    alts: list[str | None] = []
    specs: list[str] = []
    local: list[bool] = []
    for spec in cfg.sources:
        u, a, trusted = _read_spec(spec, cfg)
        urls += u
        alts += a
        specs += [spec] * len(u)
        local += [trusted] * len(u) if isinstance(trusted, bool) else trusted
    return pa.table(
        {"url": urls, "alt_text": alts, "source": specs, "row": list(range(len(urls))), "local": local},
        schema=SOURCES,
    )


def check_sources(cfg: CrawlConfig) -> None:
    """Cheap preflight (before Ray starts): every local spec exists or its glob matches; ConfigError if not.
    URLs and ``hf:`` specs are checked when read."""
    for spec in cfg.sources:
        if spec.lower().startswith(("http://", "https://", "file://", "hf:")):
            continue
        if glob.has_magic(spec):
            if not glob.glob(str(Path(spec).expanduser()), recursive=True):
                raise _error(spec, "matches no file")
        elif not Path(spec).expanduser().exists():
            raise _error(spec, f"is not a URL, a file, a folder or a glob with matches (no such path {spec!r})")


def _error(spec: str, why: str) -> ConfigError:
    return ConfigError(f"crawl.sources: {spec!r} {why}")


Rows = tuple[list[str], list[str | None], "bool | list[bool]"]  # urls, alt texts, local (all or per row)


def _read_spec(spec: str, cfg: CrawlConfig) -> Rows:
    lowered = spec.lower()
    if lowered.startswith(("http://", "https://", "file://")):
        return [spec], [None], True  # the user named this one URL, file:// included
    if lowered.startswith("hf:"):
        return _read_hf(spec, spec[3:], cfg)
    path = Path(spec).expanduser()
    if path.is_dir() and _is_saved_dataset(path):
        return _read_hf(spec, str(path), cfg)
    if glob.has_magic(spec):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            raise _error(spec, "matches no file")
        urls: list[str] = []
        alts: list[str | None] = []
        local: list[bool] = []
        for match in matches:
            if Path(match).is_dir() or Path(match).suffix.lower() in IMAGE_SUFFIXES | LIST_SUFFIXES:
                u, a, trusted = _read_path(spec, Path(match), cfg)
                urls += u
                alts += a
                local += [trusted] * len(u) if isinstance(trusted, bool) else trusted
        return urls, alts, local
    return _read_path(spec, path, cfg)


def _read_path(spec: str, path: Path, cfg: CrawlConfig) -> Rows:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [p.resolve().as_uri() for p in files], [None] * len(files), True
    if not path.is_file():
        raise _error(spec, f"is not a URL, a file, a folder or a glob with matches (no such path {str(path)!r})")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return [path.resolve().as_uri()], [None], True
    if suffix == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        urls = [line for line in lines if line and not line.startswith("#")]
        return urls, [None] * len(urls), False
    try:
        if suffix in (".csv", ".tsv"):
            parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = pacsv.read_csv(path, parse_options=parse,
                                   convert_options=pacsv.ConvertOptions(column_types={cfg.url_column: pa.string(),
                                                                                      cfg.alt_text_column: pa.string()}))
        elif suffix == ".parquet":
            table = pq.read_table(path)
        else:
            raise _error(spec, f"has an unsupported extension {suffix!r}: expected a folder, a glob, "
                               f"{sorted(LIST_SUFFIXES)} or an image file {sorted(IMAGE_SUFFIXES)}")
    except (pa.ArrowInvalid, OSError) as e:
        raise _error(spec, f"cannot be read as a URL list: {e}") from None
    return _columns(spec, f"{path.name}", table.column_names, lambda c: table.column(c).to_pylist(), cfg)


def _columns(spec: str, what: str, names: list[str], get: Any, cfg: CrawlConfig) -> Rows:
    """A URL list's rows: untrusted (``local`` False), whatever their scheme."""
    if cfg.url_column not in names:
        raise _error(spec, f"({what}) has no url column {cfg.url_column!r} (crawl.url_column); columns: {names}")
    urls = ["" if u is None else str(u).strip() for u in get(cfg.url_column)]
    alts = get(cfg.alt_text_column) if cfg.alt_text_column in names else [None] * len(urls)
    return urls, _texts(alts), False


def _texts(values: list) -> list[str | None]:
    """Alt texts as strings; missing and empty ones (an empty csv cell) as null."""
    return [None if v is None or str(v).strip() == "" else str(v) for v in values]


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _load_hf(name: str, split: str) -> Any:
    """A ``datasets.Dataset`` (one split) from a saved folder, a data folder or a hub name."""
    import datasets  # slow import; only sources that need it pay for it

    path = Path(name).expanduser()
    if path.is_dir() and _is_saved_dataset(path):
        ds = datasets.load_from_disk(str(path))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(str(path) if path.is_dir() else name, split=split)


def _read_hf(spec: str, name: str, cfg: CrawlConfig) -> Rows:
    try:
        ds = _load_hf(name, cfg.hf_split)
    except Exception as e:  # noqa: BLE001 - the datasets package raises many types; name the spec
        raise _error(spec, f"cannot be loaded as a Hugging Face dataset (split {cfg.hf_split!r}): "
                           f"{type(e).__name__}: {e}") from None
    names = list(ds.column_names)
    table = ds.with_format("arrow")[:]  # pa.Table, no image decoding
    if cfg.url_column in names:
        return _columns(spec, f"split {cfg.hf_split}", names, lambda c: table.column(c).to_pylist(), cfg)
    import datasets

    if not isinstance(ds.features.get(cfg.hf_image_column), datasets.Image):
        raise _error(spec, f"has neither a url column {cfg.url_column!r} nor an Image column "
                           f"{cfg.hf_image_column!r} (crawl.url_column / crawl.hf_image_column); columns: {names}")
    urls = [hf_ref(name, cfg.hf_split, cfg.hf_image_column, i) for i in range(len(ds))]
    alts = table.column(cfg.alt_text_column).to_pylist() if cfg.alt_text_column in names else [None] * len(urls)
    return urls, _texts(alts), True


def hf_ref(name: str, split: str, column: str, index: int) -> str:
    """The url of one image cell of a Hugging Face dataset: hfds://<name>?split=..&column=..#<index>."""
    if Path(name).expanduser().exists():
        name = str(Path(name).expanduser().resolve())
    return f"{HF_SCHEME}://{quote(name, safe='/:@')}?split={quote(split)}&column={quote(column)}#{index}"


def parse_hf_ref(url: str) -> tuple[str, str, str, int]:
    """(name, split, column, index) of an hf_ref url; FetchError(bad_url) if malformed."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    try:
        name = unquote(parts.netloc + parts.path)
        return name, query["split"][0], query["column"][0], int(parts.fragment)
    except (KeyError, IndexError, ValueError):
        raise FetchError("bad_url", f"malformed dataset reference {url!r}") from None


def open_hf_image(url: str, cache: dict, lock: threading.Lock, max_bytes: int, roots: list[str]) -> bytes:
    """The encoded bytes of the image cell an hf_ref url points to (datasets opened once, cached).

    A cell that holds only a ``path`` is read only when the path lies inside the dataset's own
    folder or under one of ``roots``: a dataset from elsewhere cannot point at any file on disk."""
    name, split, column, index = parse_hf_ref(url)
    with lock:
        ds = cache.get((name, split))
        if ds is None:
            try:
                ds = _load_hf(name, split).with_format("arrow")
            except Exception as e:  # noqa: BLE001
                raise FetchError("bad_url", f"cannot open dataset {name!r}: {type(e).__name__}: {e}"[:300]) from None
            cache[(name, split)] = ds
    if not 0 <= index < len(ds) or column not in ds.column_names:
        raise FetchError("bad_url", f"no cell {column!r} #{index} in dataset {name!r} ({len(ds)} rows)")
    cell = ds[index : index + 1].column(column)[0].as_py()  # {"bytes": ..., "path": ...}
    if not isinstance(cell, dict):
        raise FetchError("not_image", f"cell {column!r} #{index} is not an image")
    if cell.get("bytes") is not None:
        return cell["bytes"]
    if cell.get("path"):
        path = Path(name).expanduser()
        base = [str(path)] if path.is_dir() else []
        if not under_roots(cell["path"], base + list(roots)):
            raise FetchError("bad_url", f"cell {column!r} #{index} holds only a path outside the dataset's folder "
                                        "and crawl.local_roots; not read")
        return read_local_file(cell["path"], max_bytes)
    raise FetchError("not_image", f"cell {column!r} #{index} is empty")


def under_roots(path: str | os.PathLike, roots: list[str]) -> bool:
    """Whether ``path``, with symlinks and ``..`` resolved, lies inside one of the folders ``roots``."""
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(os.path.expanduser(root))
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False


def read_local_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """A regular file's bytes, or FetchError. Devices, FIFOs and sockets are refused without
    blocking (opened non-blocking, checked with fstat), and at most ``max_bytes + 1`` bytes are
    read, so /dev/zero or a file that grows cannot exhaust memory. Errors never quote content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise FetchError("bad_url", f"no such file: {path} ({type(e).__name__})") from None
    except OSError as e:
        raise FetchError("bad_url", f"cannot open {path}: {type(e).__name__}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FetchError("bad_url", f"not a regular file: {path}")
        if st.st_size > max_bytes:
            raise FetchError("too_large", f"{st.st_size} bytes > max_bytes {max_bytes}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise FetchError("bad_url", f"cannot read {path}: {type(e).__name__}: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise FetchError("too_large", f"over max_bytes {max_bytes} while reading")
    return data

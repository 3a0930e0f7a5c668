"""A finished table's part list (name, size, rows) and how its folder differs from it.

Used by catalog/lake.py: ``finish`` records :func:`part_list` in the manifest; reads and digests
check :func:`part_problems`; a rerun of the stage moves what does not match aside with
:func:`quarantine` (nothing is deleted) and redoes the rows that went missing.
"""
from __future__ import annotations

import datetime as _dt
import logging
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def parquet_files(fs: pafs.FileSystem, folder: str) -> dict[str, int]:
    """name relative to ``folder`` -> size, of every finished part below it (never ``.tmp``)."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return {i.path[len(folder) + 1:]: int(i.size) for i in sorted(infos, key=lambda i: i.path)
            if i.path.endswith(".parquet")}


def part_list(fs: pafs.FileSystem, folder: str) -> list[dict[str, Any]]:
    """name, size and row count (from the Parquet footer) of every finished part."""
    out = []
    for name, size in parquet_files(fs, folder).items():
        with fs.open_input_file(f"{folder}/{name}") as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        out.append({"name": name, "size": size, "rows": int(rows)})
    return out


def part_problems(fs: pafs.FileSystem, folder: str, manifest: dict[str, Any]) -> list[str]:
    """How the parts in ``folder`` differ from ``manifest`` (empty: they match). A manifest from
    before parts were recorded cannot be checked and passes."""
    if "parts" not in manifest:
        return []
    found = parquet_files(fs, folder)
    out = []
    for part in manifest["parts"]:
        size = found.pop(part["name"], None)
        if size is None:
            out.append(f"part {part['name']} ({part['rows']} rows) listed in the manifest is missing")
        elif size != part["size"]:
            out.append(f"part {part['name']} is {size} bytes, the manifest says {part['size']} (truncated or replaced)")
    out += [f"stray file {name} is not in the manifest" for name in sorted(found)]
    return out


def quarantine(fs: pafs.FileSystem, folder: str, manifest: dict[str, Any], into: str) -> list[str]:
    """Move every part that is not in ``manifest`` with its recorded size to ``into/<time>/...``;
    returns the moved names. The parts that match stay, so a resumed stage redoes only the rest."""
    listed = {p["name"]: p["size"] for p in manifest.get("parts", [])}
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    moved = []
    for name, size in parquet_files(fs, folder).items():
        if listed.get(name) == size:
            continue
        target = f"{into}/{stamp}/{name}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        fs.move(f"{folder}/{name}", target)
        log.warning("%s: moved %s to %s", folder, name, target)
        moved.append(name)
    return moved

"""Each training worker's share of the `pairs` table, planned once and read by that worker alone.

The driver reads the thin columns that decide eligibility (status, image_id: tens of bytes a row)
of every row group once, and cuts the eligible rows, in the order (part path, row group, row), into
``world_size`` contiguous runs of equal length (+-1); rank r gets the r-th (:func:`plan_shares`).
A worker opens only the row groups its run touches and reads the wide columns (hq, lq: PNG bytes)
of those alone (:func:`read_share`): the table is read about once per epoch over all workers,
not once per worker. A row group cut between two runs is read by both ranks (each keeps its own
rows); the lake writes one row group per part, a Ray block of a few dozen rows, so that is at most
one part per rank.

The plan depends on the lake's parts and the world size only, never on arrival order, so a run
resumed after a kill gets the same rows on every rank, and the per-step batches (stages/train_data.py)
stay a function of the step. With fewer eligible rows than workers, rank r takes row ``r mod n``.
No Ray here: pipelines/train.py makes the plan on the driver and hands each worker its pieces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Piece:
    """Rows of one row group of one part that belong to one rank, as [start, stop) ranges."""

    path: str
    row_group: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def rows(self) -> int:
        return sum(b - a for a, b in self.ranges)


@dataclass(frozen=True)
class Group:
    """One row group of one part and the offsets of its eligible rows."""

    path: str
    row_group: int
    eligible: tuple[int, ...]


@dataclass
class ReadStats:
    """What one worker read: rows kept, row groups and files opened, column-chunk bytes (compressed)."""

    rows: int = 0
    row_groups: int = 0
    files: int = 0
    bytes: int = 0

    def metrics(self) -> dict[str, int]:
        return {"rows": self.rows, "row_groups": self.row_groups, "files": self.files, "bytes": self.bytes}


def eligible_groups(fs: pafs.FileSystem, files: Sequence[str], columns: Sequence[str],
                    keep: Callable[[pa.Table], pa.ChunkedArray]) -> list[Group]:
    """Every row group of ``files`` (in the given order) with the offsets of the rows ``keep`` keeps,
    reading only ``columns`` (what ``keep`` looks at)."""
    out = []
    for path in files:
        with pq.ParquetFile(path, filesystem=fs) as pf:
            for g in range(pf.metadata.num_row_groups):
                mask = keep(pf.read_row_group(g, columns=list(columns)))
                out.append(Group(path, g, tuple(pc.indices_nonzero(mask.fill_null(False)).to_pylist())))
    return out


def plan_shares(groups: Sequence[Group], world_size: int) -> list[list[Piece]]:
    """The pieces of every rank: the eligible rows cut into ``world_size`` contiguous, balanced runs."""
    if world_size < 1:
        raise ValueError(f"world_size = {world_size}: expected an integer >= 1")
    flat = [(i, off) for i, grp in enumerate(groups) for off in grp.eligible]  # global order
    n = len(flat)
    if n == 0:
        raise ValueError("no eligible training rows: the `pairs` table has no ok rows in the train split")
    shares = []
    for rank in range(world_size):
        mine = flat[rank * n // world_size:(rank + 1) * n // world_size] if n >= world_size else [flat[rank % n]]
        shares.append(_pieces(groups, mine))
    return shares


def _pieces(groups: Sequence[Group], rows: list[tuple[int, int]]) -> list[Piece]:
    """(group index, offset) pairs in order -> one Piece per group, offsets merged into ranges."""
    out: list[Piece] = []
    ranges: list[list[int]] = []
    current: Optional[int] = None
    for gi, off in rows + [(-1, -1)]:  # sentinel flushes the last group
        if gi != current:
            if current is not None:
                out.append(Piece(groups[current].path, groups[current].row_group, tuple(map(tuple, ranges))))
            current, ranges = gi, []
        if gi < 0:
            break
        if ranges and ranges[-1][1] == off:
            ranges[-1][1] = off + 1
        else:
            ranges.append([off, off + 1])
    return out


def read_share(fs: pafs.FileSystem, pieces: Sequence[Piece], columns: Sequence[str]) -> tuple[pa.Table, ReadStats]:
    """This rank's rows (only the row groups its pieces name are opened), and what was read."""
    if not pieces:
        raise ValueError("read_share: no pieces (plan_shares gives every rank at least one row)")
    stats = ReadStats()
    tables = []
    opened: dict[str, pq.ParquetFile] = {}
    for piece in pieces:
        if piece.path not in opened:
            opened[piece.path] = pq.ParquetFile(piece.path, filesystem=fs)
        pf = opened[piece.path]
        group = pf.read_row_group(piece.row_group, columns=list(columns))
        meta = pf.metadata.row_group(piece.row_group)
        stats.bytes += sum(meta.column(j).total_compressed_size for j in range(meta.num_columns)
                           if meta.column(j).path_in_schema in columns)
        stats.row_groups += 1
        idx = pa.array([i for a, b in piece.ranges for i in range(a, b)], pa.int64())
        tables.append(group.take(idx))
    for pf in opened.values():
        pf.close()
    table = pa.concat_tables(tables, promote_options="default")
    stats.files, stats.rows = len(opened), table.num_rows
    return table, stats

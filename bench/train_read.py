"""What each training worker reads from `pairs`, before and after per-rank shares; JSON, no assertions.

    python bench/train_read.py                         # 8 photos x 4 variants, 256 px, parts of 4 rows
    python bench/train_read.py --variants 8 --gt-size 512 --part-rows 8 --workers 1 2 4 8

Bytes are counted at the file handles Parquet reads through (tests/support/read_counter.py), on a lake of
real degraded pairs (the degrade stage, PNG bytes). ``before``: every worker read every part, the
columns it trains on (Ray Data's read_parquet of the whole table, then a hash share). ``after``:
pipelines/train.py TrainShares, each rank reading the row groups of its share; ``plan``: what the
driver reads once to plan the shares (status and image_id columns, and each part's footer).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_lake(root: Path, variants: int, gt_size: int, part_rows: int):
    from catalog.lake import Lake
    from stages.degrade import DegradeConfig, degrade_files

    photos = sorted((ROOT / "data" / "samples").glob("*.jpg"))
    rows = degrade_files(photos, DegradeConfig(gt_size=gt_size, scale=4, variants_per_image=variants)).sort_by("pair_id")
    lake = Lake(str(root))
    for i in range(0, rows.num_rows, part_rows):
        lake.write_part("pairs/degraded", rows.slice(i, part_rows), name=f"part-{i // part_rows:05d}")
    return lake


def measure(lake, workers: list[int]) -> dict:
    import pyarrow.parquet as pq

    from pipelines.train import PAIR_COLUMNS, _OkWithCaptions, train_shares
    from tests.support.read_counter import ReadCounter
    from stages.train_shards import eligible_groups

    files = lake.files("pairs")
    before = ReadCounter()
    for f in files:
        pq.read_table(f, columns=PAIR_COLUMNS, filesystem=before.filesystem())
    table_bytes = sum(lake.fs.get_file_info(f).size for f in files)
    out = {"parts": len(files), "rows": pq.ParquetDataset(files).read(columns=["pair_id"]).num_rows,
           "table_bytes": table_bytes, "before_bytes_per_worker": before.total(), "runs": []}
    for n in workers:
        data = train_shares(lake, n)
        planner = ReadCounter()  # the plan's read (train_shares' eligible_groups), counted
        eligible_groups(planner.filesystem(), files, ["status", "image_id"], _OkWithCaptions({}).keep)
        ranks = []
        for rank in range(n):
            c = ReadCounter()
            rows, stats = dataclasses.replace(data, fs=c.filesystem()).rows(rank, n)
            ranks.append({"rank": rank, "rows": len(rows), "parts_opened": len(c.opened), "bytes": c.total(),
                          "column_chunk_bytes": stats.bytes})
        after = [r["bytes"] for r in ranks]
        out["runs"].append({"workers": n, "plan_bytes": planner.total(),
                            "before_total_bytes": before.total() * n, "after_total_bytes": sum(after),
                            "after_max_bytes_per_worker": max(after),
                            "after_over_ideal": round(max(after) / (before.total() / n), 3), "ranks": ranks})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--gt-size", type=int, default=256)
    ap.add_argument("--part-rows", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="supir-bench-read-") as d:
        lake = build_lake(Path(d) / "lake", args.variants, args.gt_size, args.part_rows)
        result = {"bench": "train_read", **vars(args), **measure(lake, args.workers)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

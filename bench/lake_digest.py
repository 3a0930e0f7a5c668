"""Digests of the rows of a lake's crawl..degrade tables: proves a refactor left a run's outputs unchanged.

    python pipelines/full.py --config configs/demo.yaml lake=/tmp/before "stages=[crawl, filter, caption, degrade]"
    ... (change the code) ... the same with lake=/tmp/after, then
    python bench/lake_digest.py /tmp/before [--checkout /path/of/the/old/checkout]
    python bench/lake_digest.py /tmp/after

Prints JSON: per table its row count and one sha256 over every row (sorted by key) and column, but
the wall-clock ones (fetched_at, seconds). Paths of the lake and of the checkout inside values (a
local file's url, the demo captioner's folder) are replaced by placeholders, so two lakes made from
two checkouts compare. Equal digests: the same rows from the same inputs and seeds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = (("images", "image_id"), ("filtered", "image_id"), ("captions", "image_id"), ("pairs/degraded", "pair_id"))
WALL_CLOCK = ("fetched_at", "seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lake", help="lake folder")
    ap.add_argument("--checkout", default=str(ROOT), help="the checkout that made the lake (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from catalog.lake import Lake

    lake, out = Lake(args.lake), {}
    for table, key in TABLES:
        if not lake.exists(table):
            continue
        t = lake.read(table)
        cols = [c for c in t.column_names if c not in WALL_CLOCK]
        h = hashlib.sha256()
        rows = sorted(t.select(cols).to_pylist(), key=lambda r: str(r[key]))
        for r in rows:
            for c in cols:
                v = r[c]
                if isinstance(v, str):
                    v = v.replace(str(Path(args.lake).resolve()), "<lake>").replace(args.lake, "<lake>")
                    v = v.replace(args.checkout, "<checkout>")
                data = v if isinstance(v, bytes) else json.dumps(v, default=str, sort_keys=True).encode()
                h.update(c.encode() + b"=" + data + b"\0")
        out[table] = {"rows": len(rows), "columns": len(cols), "sha256": h.hexdigest()[:16]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Quality of every method in a lake: one JSON line per (method, split) with each metric's mean.

    python bench/quality.py                    # ./lake
    python bench/quality.py --lake /tmp/lake2 --split heldout

Trains nothing: reads the `metrics` table (written by the evaluate stage) through DuckDB. Per line:
``method``, ``split``, ``runs`` (restoration runs, e.g. sampler seeds), ``pairs``, and per metric
the mean over pairs and runs (``<metric>``), plus, where a method has several runs, the spread of
the per-run means (``<metric>_seed_sd``: their standard deviation, ``<metric>_seed_range``: max - min),
so a difference between two rows can be set against it. For colour, ``rgb_mean_abs_diff`` (when the
evaluate stage scored it) is the mean over pairs of |mean channel value - the HQ's| in 0-255 levels.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog.lake import Lake

# per run: mean over its pairs; then per method and split: mean and spread over runs
QUALITY_SQL = """
WITH per_run AS (
    SELECT coalesce(split, 'all') AS split, method, run_id, metric,
           avg(value) AS mean, count(DISTINCT pair_id) AS pairs
    FROM metrics WHERE status = 'ok' GROUP BY ALL
)
SELECT split, method, metric, count(*) AS runs, max(pairs) AS pairs, avg(mean) AS mean,
       stddev_samp(mean) AS seed_sd, max(mean) - min(mean) AS seed_range
FROM per_run GROUP BY ALL ORDER BY split, method, metric
"""


def quality(lake: Lake, split: str | None = None) -> list[dict]:
    """The JSON lines of the docstring, as dicts."""
    import duckdb

    files = lake.files("metrics")
    if not files:
        raise FileNotFoundError(f"no `metrics` table in {lake.root}: run the evaluate stage first")
    con = duckdb.connect()
    paths = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE VIEW metrics AS SELECT * FROM read_parquet([{paths}], union_by_name = true)")
    df = con.execute(QUALITY_SQL).df()
    lines: dict[tuple[str, str], dict] = {}
    for r in df.itertuples():
        if split and r.split != split:
            continue
        line = lines.setdefault((r.split, r.method), {"method": r.method, "split": r.split, "runs": int(r.runs),
                                                      "pairs": int(r.pairs)})
        line["runs"] = max(line["runs"], int(r.runs))
        line[r.metric] = round(float(r.mean), 5)
        if r.runs > 1:
            line[f"{r.metric}_seed_sd"] = round(float(r.seed_sd), 5)
            line[f"{r.metric}_seed_range"] = round(float(r.seed_range), 5)
    return list(lines.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lake", default="lake")
    ap.add_argument("--split", default=None, help="only this split (heldout, train, all)")
    args = ap.parse_args(argv)
    for line in quality(Lake(args.lake), args.split):
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

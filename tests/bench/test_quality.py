"""bench/quality.py run as a script over a small `metrics` table; its JSON lines checked."""
from __future__ import annotations

import pyarrow as pa

from catalog.lake import Lake, conform
from tests.support.bench_runs import json_lines, run_bench


def test_bench_quality_means_and_seed_spread(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    rows = []
    for run, offset in (("s0", 0.0), ("s1", 1.0), ("s2", 2.0)):  # three seeds of "supir"
        for p, v in (("p0", 10.0), ("p1", 12.0)):
            rows.append(dict(pair_id=p, run_id=run, method="supir", degradation="d", split="heldout",
                             metric="psnry", value=v + offset, status="ok"))
    rows.append(dict(pair_id="p0", run_id="b", method="bicubic", degradation="d", split="heldout",
                     metric="psnry", value=20.0, status="ok"))
    rows.append(dict(pair_id="p0", run_id="b", method="bicubic", degradation="d", split="heldout",
                     metric="musiq", value=None, status="unavailable"))
    lake.write_part("metrics", conform("metrics", pa.Table.from_pylist(rows)))
    got = {r["method"]: r for r in json_lines(run_bench("quality.py", "--lake", lake.root, "--split", "heldout"))}
    assert got["supir"] == {"method": "supir", "split": "heldout", "runs": 3, "pairs": 2, "psnry": 12.0,
                            "psnry_seed_sd": 1.0, "psnry_seed_range": 2.0}
    assert got["bicubic"] == {"method": "bicubic", "split": "heldout", "runs": 1, "pairs": 1, "psnry": 20.0}

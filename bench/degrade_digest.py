"""Digest of the degrade stage's output on data/samples: proves a refactor left the pairs unchanged.

    python bench/degrade_digest.py [--config configs/demo.yaml] [--set recipe=bsrgan ...] [--seed 0]

Runs the Degrader over the sample photos with the `degrade:` section of a run config (plus
--set overrides, YAML values) and prints JSON: the sha256 of every output column of every pair
and one digest over all of them. Run it before and after a change and compare: equal digests
mean byte-identical `pairs/degraded` rows (hq and lq PNGs, params, status) from the same inputs
and seeds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _sha(value) -> str:
    data = value if isinstance(value, bytes) else json.dumps(None if value is None else str(value)).encode()
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the degrade section, dotted keys for nested sections")
    ap.add_argument("--samples", default=str(ROOT / "data" / "samples"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from catalog.config import from_dict
    from catalog.schemas import PAIR_COLUMNS
    from stages.degrade import DegradeConfig, Degrader

    section = yaml.safe_load(Path(args.config).read_text()).get("degrade") or {}
    for item in args.set:
        key, _, value = item.partition("=")
        node = section
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    cfg = from_dict(DegradeConfig, section, prefix="degrade")
    paths = sorted(Path(args.samples).glob("*.jpg"))
    batch = {"image_id": np.array([p.stem for p in paths], dtype=object),
             "bytes": np.array([p.read_bytes() for p in paths], dtype=object)}
    out = Degrader(cfg)(batch)
    pairs = {}
    for i, pair_id in enumerate(out["pair_id"]):
        pairs[str(pair_id)] = {c: _sha(out[c][i]) for c in PAIR_COLUMNS}
    total = hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest()
    print(json.dumps({"config": args.config, "set": args.set, "pairs": len(pairs),
                      "ok": int(sum(s == "ok" for s in out["status"])), "digest": total, "per_pair": pairs},
                     indent=1, sort_keys=True))


if __name__ == "__main__":
    main()

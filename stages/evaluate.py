"""Evaluate stage: restorations scored against their HQ images into `metrics` rows (no Ray here).

    evaluator = Evaluator(EvalConfig(metrics=["psnry", "ssim", "niqe"], weights_dir="weights"))
    rows = evaluator({"pair_id": ids, "method": methods, "run_id": runs,
                      "restored": pngs, "hq": hq_pngs, "degradation": names, "split": splits})
    # rows has the METRICS columns (catalog.schemas), one row per input row and metric

Long format: one row per (pair, method, run, metric). A metric whose weights are missing gives
status "unavailable" and a null value on every row; a failure on one image gives status "error"
on that row only. Values are pyiqa's own (evaluation/metrics.py).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from catalog.schemas import METRICS
from evaluation.metrics import EvalConfig, Metric, load_metric, score
from model.devices import resolve_device

log = logging.getLogger(__name__)

METRIC_COLUMNS = tuple(METRICS.names)


class Evaluator:
    """Loads every configured metric once; ``__call__`` scores a numpy batch into METRICS rows."""

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.metrics: list[Metric] = [load_metric(n, cfg.weights_dir, self.device, cfg.allow_download)
                                      for n in cfg.metrics]
        for m in self.metrics:
            if m.status != "ok":
                log.warning("metric %s is %s: %s", m.name, m.status, m.error)

    def availability(self) -> dict[str, str]:
        return {m.name: m.status for m in self.metrics}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["pair_id"])
        restored = [bytes(b) if b is not None else None for b in batch["restored"]]
        hq = [bytes(b) if b is not None else None for b in batch["hq"]] if "hq" in batch else [None] * n
        degradation = list(batch["degradation"]) if "degradation" in batch else [None] * n
        split = list(batch["split"]) if "split" in batch else [None] * n
        cols: dict[str, list[Any]] = {c: [] for c in METRIC_COLUMNS}
        ok = [i for i in range(n) if restored[i] is not None]
        for m in self.metrics:
            results = dict(zip(ok, score(m, [restored[i] for i in ok], [hq[i] for i in ok],
                                         self.cfg.batch_size, self.device)))
            for i in range(n):
                value, status, error = results.get(i, (None, "error", "no restored image"))
                cols["pair_id"].append(str(batch["pair_id"][i]))
                cols["run_id"].append(str(batch["run_id"][i]))
                cols["method"].append(str(batch["method"][i]))
                cols["degradation"].append(None if degradation[i] is None else str(degradation[i]))
                cols["split"].append(None if split[i] is None else str(split[i]))
                cols["metric"].append(m.name)
                cols["value"].append(value)
                cols["status"].append(status)
                cols["error"].append(error)
        # an Arrow table, so that a missing value stays null (a numpy float column would hold NaN)
        return pa.table(cols, schema=METRICS)

"""The baselines and evaluate stages on a small lake of demo-like pairs, under Ray and MLflow."""
from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image, ImageFilter

from catalog import layout
from catalog.lake import Lake
from catalog.tracking import Tracker, TrackingConfig
from evaluation.baselines import BaselineConfig
from evaluation.metrics import EvalConfig
from evaluation.report import TABLE1_SQL, table1
from tests.support.iqa_weights import demo_pairs, has_niqe, seeded_weights

pytestmark = [pytest.mark.ray, pytest.mark.slow]

N_PAIRS = 3
METRICS = ["psnry", "ssim", "stlpips", "niqe", "lpips"]  # lpips: no weights offline -> unavailable


def supir_standin(lq: bytes, size) -> bytes:
    """A stand-in for SUPIR's output (the tiny demo model is trained elsewhere): sharpened bicubic."""
    img = Image.open(io.BytesIO(lq)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.filter(ImageFilter.UnsharpMask(2, 80, 2)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, photos):
    from pipelines.common import Context

    root = tmp_path_factory.mktemp("lake")
    lake = Lake(str(root))
    pairs = demo_pairs(photos, N_PAIRS, gt_size=256)
    lake.write_part("pairs", pa.table({k: list(v) for k, v in pairs.items()}))
    sizes = [Image.open(io.BytesIO(h)).size for h in pairs["hq"]]
    lake.write_part("restorations", pa.table({
        "pair_id": list(pairs["pair_id"]), "run_id": ["supir-test"] * N_PAIRS, "method": ["supir"] * N_PAIRS,
        "status": ["ok"] * N_PAIRS, "restored": [supir_standin(lq, s) for lq, s in zip(pairs["lq"], sizes)],
    }))
    weights, _ = seeded_weights(tmp_path_factory.mktemp("weights"))
    cfg = SimpleNamespace(
        baselines=BaselineConfig(tile=0),
        evaluate=EvalConfig(metrics=METRICS, weights_dir=str(weights), seed_offline=False, grid_rows=2),
    )
    tracker = Tracker(TrackingConfig(experiment="eval-test"), str(root))
    return Context(cfg, lake, tracker)


def test_baselines_then_evaluate(ctx, ray_local):
    from pipelines.evaluate import run_baselines, run_evaluate

    lake = ctx.lake
    with ctx.tracker.pipeline("eval-test", {}):
        assert run_baselines(ctx) == {"ok": 2 * N_PAIRS}
        counts = run_evaluate(ctx)
    rows = lake.read("metrics")
    assert rows.num_rows == N_PAIRS * 3 * len(METRICS)
    niqe_ok = has_niqe(Path(ctx.cfg.evaluate.weights_dir))
    want_unavailable = N_PAIRS * 3 * (1 + (not niqe_ok))
    assert counts == {"ok": rows.num_rows - want_unavailable, "unavailable": want_unavailable}
    lp = rows.filter(pc.equal(rows["metric"], "lpips"))
    assert lp["value"].null_count == lp.num_rows and set(lp["status"].to_pylist()) == {"unavailable"}
    assert set(rows["degradation"].to_pylist()) == {"realesrgan x4"}

    # Real-ESRGAN beats bicubic on ST-LPIPS (lower is better); NIQE needs demo-size 512-pixel
    # crops to mean anything (tests/evaluation/test_realesrgan.py checks both there)
    df = table1(rows)
    mean = {(r.method, r.metric): r.mean for r in df.itertuples() if r.status == "ok"}
    print("\n" + df.to_string())
    assert mean[("realesrgan", "stlpips")] < mean[("bicubic", "stlpips")]

    # the report and the canned query agree
    from catalog.sql import connect

    con = connect(lake.root, ctx.tracker.uri, writable=True)  # reads the parts itself: needs file access
    con.execute(f"CREATE VIEW metrics2 AS SELECT * FROM read_parquet('{lake.path('metrics')}/*.parquet')")
    sql_df = con.execute(TABLE1_SQL.replace("FROM metrics", "FROM metrics2")).df()
    import pandas as pd

    report = pd.read_parquet(f"{lake.base}/reports/evaluate/table1.parquet")
    pd.testing.assert_frame_equal(sql_df.reset_index(drop=True), report.reset_index(drop=True))
    md = open(f"{lake.base}/reports/evaluate/table1.md").read()
    assert "| realesrgan x4 | lpips ↓ | n/a | n/a | n/a |" in md

    # MLflow: aggregates per metric/method/degradation; unavailable metrics are tags, never a 0
    from mlflow import MlflowClient

    client = MlflowClient(ctx.tracker.uri)
    run = next(r for r in client.search_runs([ctx.tracker.experiment_id]) if r.data.tags.get("stage") == "evaluate")
    assert run.data.metrics["stlpips/realesrgan/realesrgan x4"] == pytest.approx(mean[("realesrgan", "stlpips")])
    assert not any(k.startswith("lpips/") for k in run.data.metrics)
    assert run.data.tags["metric_status.lpips"] == "unavailable"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/table1.md", "report/table1.png", "report/grid.png", "report/table1.parquet"} <= arts

    # a rerun with nothing changed is a cache hit; the baselines table kept its rows
    assert run_evaluate(ctx) == counts
    assert lake.manifest("metrics")["state"] == "fresh"
    assert lake.read(layout.BASELINES, columns=["method"]).num_rows == 2 * N_PAIRS

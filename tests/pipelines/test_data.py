"""caption -> degrade -> restore as one Ray program over a lake (the unit tests call the stages'
callables directly; this runs them as pipelines/ wires them: Ray Data actors, lake parts, manifests,
the cache, and a lost part repaired)."""
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog import codec, layout
from catalog.lake import Lake
from tests.support import ROOT
from tests.support.ray_procs import job_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "pipelines/full.py", "--config", "configs/demo.yaml", *args], cwd=ROOT,
                       env=job_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def test_caption_degrade_and_lake_restore_through_ray(tmp_path):
    from model.checkpoint import save_trainable
    from model.config import ModelConfig
    from model.supir import build_model

    checkpoint = save_trainable(build_model(ModelConfig(preset="tiny")), tmp_path / "supir-tiny")
    lake_dir = tmp_path / "lake"
    args = [f"lake={lake_dir}", "ray.progress_bars=false", "tracking.enabled=false", "model.prior=null",
            "stages=[crawl, filter, caption, degrade, restore]", f"restore.model={checkpoint}",
            "restore.sampler.num_steps=2", "restore.sampler.s_churn=0"]
    _run(args, tmp_path)
    lake = Lake(lake_dir)
    kept = set(r["image_id"] for r in lake.read("filtered").to_pylist() if r["keep"])
    assert len(kept) == len(list((ROOT / "data" / "samples").glob("*.jpg")))

    # caption: one row per kept image, each from the configured captioner, with words in it
    captions = lake.read("captions").to_pylist()
    assert {c["image_id"] for c in captions} == kept and all(c["status"] == "ok" for c in captions)
    assert all(c["caption"] and c["captioner"] for c in captions)

    # degrade: variants_per_image pairs per image, HQ at gt_size, LQ at gt_size / scale resized back
    pairs = lake.read(layout.DEGRADED).to_pylist()
    assert len(pairs) == 2 * len(kept) and {p["image_id"] for p in pairs} == kept
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    for p in pairs:
        hq, lq = codec.decode_rgb(bytes(p["hq"])), codec.decode_rgb(bytes(p["lq"]))
        assert p["status"] == "ok" and hq.size == (128, 128) and lq.size == (128, 128), p["pair_id"]

    # restore in lake mode: every pair restored to its HQ size, into the run's partition
    runs = [d for d in (lake_dir / layout.RESTORATIONS).iterdir() if d.is_dir()]
    assert len(runs) == 1
    restored = lake.read(layout.partition(layout.RESTORATIONS, runs[0].name)).to_pylist()
    assert {r["pair_id"] for r in restored} == {p["pair_id"] for p in pairs}
    assert all(r["status"] == "ok" for r in restored)
    # degraded pairs carry no caption; restore joins each pair's image caption, as training does
    assert all(p["caption"] is None for p in pairs)
    params = __import__("json").loads(restored[0]["params"])
    assert params["use_captions"] is True
    assert all(Image.open(__import__("io").BytesIO(bytes(r["restored"]))).size == (128, 128) for r in restored)

    # a second run is all cache hits; a lost pairs part is noticed and only its rows are made again
    manifest = lake.manifest(layout.DEGRADED)
    r2 = _run(args, tmp_path)
    for stage in ("caption", "degrade", "restore"):
        assert f"{stage}: cached" in r2.stderr, stage
    assert lake.manifest(layout.DEGRADED) == manifest
    lost = lake.files(layout.DEGRADED)[0]
    lost_ids = set(pq.read_table(lost, columns=["pair_id"]).column("pair_id").to_pylist())
    os.remove(lost)
    r3 = _run(args, tmp_path)
    assert "missing" in r3.stderr and "repairing" in r3.stderr
    again = lake.read(layout.DEGRADED).to_pylist()
    assert sorted(p["pair_id"] for p in again) == sorted(p["pair_id"] for p in pairs)
    assert lost_ids and lost_ids <= {p["pair_id"] for p in again}
    # the degrade draws are seeded per pair: the remade rows are the same bytes
    assert {p["pair_id"]: bytes(p["lq"]) for p in again} == {p["pair_id"]: bytes(p["lq"]) for p in pairs}

    # the model retrained into the same folder (same path, new files): restore reruns, since the
    # model's files are in its cache key, while the data stages stay cache hits
    save_trainable(build_model(ModelConfig(preset="tiny")), tmp_path / "supir-tiny")
    r4 = _run(args, tmp_path)
    assert "restore: cached" not in r4.stderr and "degrade: cached" in r4.stderr
    rerun = lake.read(layout.partition(layout.RESTORATIONS, runs[0].name)).to_pylist()
    assert {r["pair_id"] for r in rerun} == {p["pair_id"] for p in pairs} and len(rerun) == len(restored)

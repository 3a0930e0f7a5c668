"""crawl -> filter as a Ray program: the demo, caching, resume after a kill, and `ray job submit`."""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from catalog.lake import Lake
from tests.support.ray_procs import job_env, ray_head, stop_own_ray
from tests.support.http_faults import FaultServer, respond, slow
from tests.support import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _write_config(tmp_path, **sections):
    cfg = {"lake": str(tmp_path / "lake"), "ray": {"num_cpus": 2, "progress_bars": False}}
    cfg.update(sections)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd, tmp_path, timeout=300):
    r = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def test_demo_crawl_filter_then_cache(tmp_path):
    cmd = [sys.executable, "pipelines/full.py", "--config", "configs/demo.yaml", f"lake={tmp_path / 'lake'}",
           "ray.progress_bars=false", "stages=[crawl, filter]"]
    r = _run(cmd, tmp_path)
    lake = Lake(tmp_path / "lake")
    samples = sorted((ROOT / "data/samples").glob("*.jpg"))
    assert lake.status_counts("images") == {"ok": len(samples)}
    f = lake.read("filtered")
    assert f.num_rows == len(samples)
    assert set(f.column("image_id").to_pylist()) == set(lake.read("images", ["image_id"]).column("image_id").to_pylist())
    assert "iqa_piqe" in f.column_names
    assert "Try SQL:" in r.stdout and "mlflow.db" in r.stdout
    m1 = lake.manifest("filtered")
    # --plan compares the manifests with the code digest of the stage table, as the pipeline wrote it
    from pipelines import plan
    from pipelines.config import load_config

    cfg = load_config(ROOT / "configs/demo.yaml", [f"lake={tmp_path / 'lake'}"])
    for stage in ("crawl", "filter"):
        assert plan.cache_state(cfg, cfg.lake, stage).endswith("cached unless its inputs changed"), stage
    # a second run is all cache hits: manifests untouched, no new parts
    r2 = _run(cmd, tmp_path)
    assert "cached" in r2.stderr
    assert lake.manifest("filtered") == m1
    # SQL over the lake and MLflow
    q = subprocess.run([sys.executable, "-m", "catalog.sql", "--lake", str(tmp_path / "lake"), "--csv", "--query", "status_counts"],
                       cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    assert "crawl,ok," in q.stdout
    # a part of `images` lost: the rerun notices, sets nothing else aside, refetches only its rows
    lost = lake.files("images")[0]
    lost_rows = pq.read_metadata(lost).num_rows
    os.remove(lost)
    r3 = _run(cmd, tmp_path)
    assert "listed in the manifest is missing" in r3.stderr and "repairing" in r3.stderr
    assert lake.status_counts("images") == {"ok": len(samples)}
    assert lake.read("filtered").num_rows == len(samples) and lost_rows >= 1


def test_crawl_killed_half_way_resumes_without_refetching(tmp_path, photos):
    data = photos[0].read_bytes()
    n = 24
    with FaultServer() as server:
        urls = [server.add(f"/img/{i}.jpg", slow(0.4, respond(data + bytes([i]) * 8))) for i in range(n)]
        (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
        cfg = _write_config(
            tmp_path,
            stages=["crawl"],
            crawl={"sources": [str(tmp_path / "urls.txt")], "allow_private_addresses": True, "threads": 1,
                   "shard_rows": 2, "resources": {"workers": 1}, "timeout_s": 5},
        )
        cmd = [sys.executable, "pipelines/full.py", "--config", str(cfg)]
        ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's unix sockets live under it
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(job_env(), RAY_TMPDIR=ray_tmp),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        parts = tmp_path / "lake" / "images"
        deadline = time.time() + 180
        while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 3:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stop_own_ray(ray_tmp)  # the killed driver's local cluster, and nobody else's
        finished = {r for p in parts.glob("*.parquet") for r in pq.read_table(p, columns=["url"]).column("url").to_pylist()}
        assert 0 < len(finished) < n, "the kill should land half way"
        before = dict(server.counts)
        _run(cmd, tmp_path)
        lake = Lake(tmp_path / "lake")
        assert lake.status_counts("images") == {"ok": n}
        assert sorted(lake.read("images", ["url"]).column("url").to_pylist()) == sorted(urls)
        for u in finished:  # finished shards are not fetched again
            path = "/" + u.split("/", 3)[3]
            assert server.counts[path] == before[path] == 1
        assert lake.manifest("images")["state"] == "resume"


def test_ray_job_submit(tmp_path):
    """`ray start --head` then `ray job submit --working-dir . -- python pipelines/full.py`."""
    ray = str(Path(sys.executable).parent / "ray")
    # Ray >= 2.5x starts local clusters with token authentication; the job CLI sends the token
    # from ~/.ray/auth_token only in token mode
    env = dict(job_env(), RAY_AUTH_MODE="token")
    with ray_head(env, num_cpus=2, prefix="rj") as head:
        r = subprocess.run(
            [ray, "job", "submit", "--address", head.dashboard, "--working-dir", ".", "--",
             "python", "pipelines/full.py", "--config", "configs/demo.yaml", f"lake={tmp_path / 'lake'}",
             "ray.progress_bars=false", "stages=[crawl, filter]"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
        assert "succeeded" in r.stdout
        lake = Lake(tmp_path / "lake")
        assert lake.status_counts("images") == {"ok": len(list((ROOT / "data/samples").glob("*.jpg")))}
        assert lake.manifest("filtered") is not None

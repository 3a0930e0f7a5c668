"""The cluster path's tracking: a real `mlflow server` on loopback, a short pipeline submitted with
`ray job submit` that logs to it through `tracking.uri=http://127.0.0.1:PORT` (what a lake on
s3:// needs, README "On a cluster"), and its runs, datasets and artifacts read back over HTTP."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, SAMPLES
from tests.support.ray_procs import free_port, job_env, ray_head

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not answer /health in 120 s")
        yield uri, tmp_path / "server-artifacts"
    finally:  # the server and its workers: the process group this fixture started
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=30)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def test_pipeline_job_logs_to_a_tracking_server(mlflow_server, tmp_path):
    uri, artifacts = mlflow_server
    ray = str(Path(sys.executable).parent / "ray")
    env = dict(job_env(), RAY_AUTH_MODE="token")
    with ray_head(env, num_cpus=2, prefix="rm") as head:
        for _ in range(24):  # the head's job agent may need minutes to register on a loaded machine
            r = subprocess.run(
                [ray, "job", "submit", "--address", head.dashboard, "--working-dir", ".", "--",
                 "python", "pipelines/full.py", "--config", "configs/demo.yaml", f"lake={tmp_path / 'lake'}",
                 f"tracking.uri={uri}", "tracking.run_name=via-server", "stages=[crawl, filter]"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent to submit job" not in r.stderr:
                break
            time.sleep(10)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("supir-demo")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {run.info.run_name: run for run in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"via-server", "crawl", "filter"}
    parent = runs["via-server"]
    for stage in ("crawl", "filter"):
        run = runs[stage]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.metrics["status.ok" if stage == "crawl" else "status.kept"] == len(list(SAMPLES.glob("*.jpg")))
        assert "system/cpu_utilization_percentage" in run.data.metrics
    assert [d.dataset.name for d in runs["filter"].inputs.dataset_inputs] == ["images"]
    assert parent.data.params["filter.min_side"] == "512"
    # artifacts went through the server (proxied), into its artifact destination, not the lake
    local = client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path))
    assert "min_side: 512" in Path(local).read_text()
    assert list(artifacts.rglob("config.yaml")) and not (tmp_path / "lake" / "mlartifacts").exists()

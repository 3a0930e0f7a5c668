"""Training on Ray Train with 2 CPU workers (gloo): both stages overfit, a SIGKILLed run resumes exactly,
the result is registered in MLflow (pipelines/train.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.train_helpers import make_lake, sample_photos
from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Same settings for the reference run and the killed one (the run name differs, nothing else).
ENCODER = {"steps": 24, "batch_size": 2, "lr": 2e-3, "crop_size": 64, "checkpoint_every": 8,
           "resources": {"workers": 2, "cpus_per_worker": 0.5}, "progress": False, "seed": 3}
ADAPTOR = {"steps": 12, "batch_size": 2, "lr": 2e-3, "crop_size": 64, "checkpoint_every": 6,
           "resources": {"workers": 2, "cpus_per_worker": 0.5}, "progress": False, "fixed_batch": True, "sample_every": 6, "sample_num_steps": 2,
           "num_samples": 1}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, ray_local):
    """The local 2-CPU Ray cluster of ray_local, a lake with 4 real degraded pairs (64 px HQ), a tracker."""
    from catalog.config import from_dict
    from catalog.tracking import Tracker
    from pipelines.common import Context
    from pipelines.config import RayConfig, RunConfig
    from stages.train import TrainSection

    root = tmp_path_factory.mktemp("train")
    lake = make_lake(root / "lake", sample_photos()[:4], gt_size=64)
    ray_cfg = ray_local
    section = from_dict(TrainSection, {"name": "ref", "encoder": ENCODER, "adaptor": ADAPTOR}, prefix="train")
    cfg = RunConfig(lake=str(root / "lake"), ray=ray_cfg, train=section)
    tracker = Tracker(cfg.tracking, cfg.lake)
    with tracker.pipeline("train-tests", {}):
        yield Context(cfg, lake, tracker)


def losses(tracker, run_id: str) -> dict[int, float]:
    from mlflow import MlflowClient

    return {m.step: m.value for m in MlflowClient(tracker.uri).get_metric_history(run_id, "loss")}


@pytest.fixture(scope="module")
def encoder_run(ctx):
    from pipelines.train import run_train

    summary = run_train(ctx, "encoder")
    return summary, losses(ctx.tracker, summary["run_id"])


def halved(curve: dict[int, float]) -> tuple[float, float]:
    steps = sorted(curve)
    first = sum(curve[s] for s in steps[:2]) / 2
    last = sum(curve[s] for s in steps[-3:]) / 3
    return first, last


def test_stage1_two_workers_loss_halves(ctx, encoder_run):
    from mlflow import MlflowClient

    summary, curve = encoder_run
    assert summary["start_step"] == 0 and summary["step"] == ENCODER["steps"]
    assert sorted(curve) == list(range(1, ENCODER["steps"] + 1))  # loss logged every step
    first, last = halved(curve)
    print(f"stage 1, 2 workers: loss {first:.4f} -> {last:.4f}")
    assert last <= 0.5 * first
    assert (Path(summary["final"]) / "supir.json").is_file()
    assert summary["model_version"] == "1"
    # each rank read its own half of the 4 pairs (stages/train_shards.py), and logged what it read
    metrics = MlflowClient(ctx.tracker.uri).get_run(summary["run_id"]).data.metrics
    assert [metrics[f"data/rank{r}/rows"] for r in (0, 1)] == [2, 2]
    assert all(metrics[f"data/rank{r}/bytes"] > 0 for r in (0, 1))


def test_stage2_two_workers_loss_halves_and_is_registered(ctx, encoder_run):
    from mlflow import MlflowClient

    from pipelines.train import run_train

    summary = run_train(ctx, "adaptor")  # init_from auto: stage 1's E_dr
    curve = losses(ctx.tracker, summary["run_id"])
    first, last = halved(curve)
    print(f"stage 2, 2 workers: loss {first:.4f} -> {last:.4f}")
    assert last <= 0.5 * first
    client = MlflowClient(ctx.tracker.uri)
    run = client.get_run(summary["run_id"])
    assert run.data.params["init_from"].endswith("ref-encoder/final")
    assert {"loss", "lr", "samples_per_s", "grad_norm"} <= set(run.data.metrics)
    # MLflow images (key "samples", one per sample step: the UI's step slider), full-size PNGs
    arts = [a.path for a in client.list_artifacts(summary["run_id"], "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in arts if "/samples+step+" in p) == [6, 12]
    # system metrics of each training rank, by name (the stage's own are sampled on the driver)
    assert {"system/rank0/cpu_utilization_percentage", "system/rank1/cpu_utilization_percentage"} <= set(
        run.data.metrics)
    assert {a.path for a in client.list_artifacts(summary["run_id"], "model")} >= {"model/MLmodel", "model/artifacts"}
    folders = [a.path for a in client.list_artifacts(summary["run_id"], "model/artifacts")]  # the checkpoint folder
    assert len(folders) == 1, folders
    assert {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(summary["run_id"], folders[0])} >= {
        "supir.json", "adaptor", "train_config.yaml"}
    for alias in ("champion", "adaptor"):
        assert str(client.get_model_version_by_alias("supir", alias).version) == summary["model_version"] == "2"
    assert str(client.get_model_version_by_alias("supir", "encoder").version) == "1"


def test_sigkill_then_rerun_resumes_at_the_next_step(ctx, encoder_run, tmp_path):
    """The CLI, SIGKILLed after its first checkpoint, rerun: it starts at the step after the latest
    checkpoint and its per-step losses equal those of the uninterrupted reference run."""
    import ray

    _, reference = encoder_run
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"lake": ctx.cfg.lake, "ray": {"progress_bars": False},
                                      "train": {"name": "killed", "encoder": ENCODER}}))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "pipelines/train.py", "--config", str(config), "stages=[train_encoder]"]
    # Ray Train lists the checkpoints it has registered in this snapshot; a rerun resumes from its latest
    snapshot = Path(ctx.cfg.lake) / "train" / "killed-encoder" / "checkpoint_manager_snapshot.json"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            snapshot.is_file() and "checkpoint_00000008" in snapshot.read_text(errors="replace")):
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended (or never checkpointed) before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its session
    proc.wait()
    time.sleep(3)  # the dead job's workers are reaped and their CPUs freed
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("TRAIN_RESULT "))[13:])
    start = summary["start_step"]
    assert start in (8, 16) and summary["step"] == ENCODER["steps"]
    resumed = losses(ctx.tracker, summary["run_id"])
    assert sorted(resumed) == list(range(start + 1, ENCODER["steps"] + 1))
    for step, value in resumed.items():
        assert value == pytest.approx(reference[step], rel=1e-5), step

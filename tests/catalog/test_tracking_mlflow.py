"""MLflow as its users use it: the runs table on open, system metrics, input datasets, image steps,
a lake that can be copied or moved (catalog/tracking.py)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from catalog import tracking
from catalog.tracking import Tracker, TrackingConfig


@pytest.fixture(autouse=True)
def _lake_store(monkeypatch):
    """These tests are about the lake's embedded store: no tracking URI from the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_experiment_is_tagged_to_open_on_its_runs_table(tmp_path):
    t = Tracker(TrackingConfig(experiment="e"), str(tmp_path / "lake"))
    exp = MlflowClient(t.uri).get_experiment(t.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert Tracker(TrackingConfig(experiment="e"), str(tmp_path / "lake")).experiment_id == t.experiment_id


def test_stage_runs_have_system_metrics_input_datasets_and_image_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "SYSTEM_METRICS_INTERVAL_S", 0.2)
    t = Tracker(TrackingConfig(experiment="e"), str(tmp_path / "lake"))
    with t.pipeline("p", {"a": 1}), t.stage("crawl") as run:
        run.log_inputs({"sources": (str(tmp_path / "lake" / "sources"), "0123abcd")})
        for step in (1, 2):
            run.log_image(Image.new("RGB", (8, 8), (step * 50, 0, 0)), "samples", step=step)
        time.sleep(1.5)
    client = MlflowClient(t.uri)
    got = client.get_run(run.run_id)
    assert "system/cpu_utilization_percentage" in got.data.metrics
    assert "system/system_memory_usage_megabytes" in got.data.metrics
    (ds,) = got.inputs.dataset_inputs
    assert (ds.dataset.name, ds.dataset.digest) == ("sources", "0123abcd")
    assert {tag.key: tag.value for tag in ds.tags}["mlflow.data.context"] == "input"
    pngs = [a.path for a in client.list_artifacts(run.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in pngs) == [1, 2]


def test_a_copied_lake_serves_its_own_artifacts_and_models(tmp_path):
    """Copy the lake, delete the original: the copy's runs, model versions and datasets still resolve."""
    old = tmp_path / "old-lake"
    t = Tracker(TrackingConfig(experiment="e"), str(old))
    with t.pipeline("p", {}) as parent:
        parent.log_text("hello", "note.txt")
        parent.log_inputs({"images": (str(old / "images"), "d1")})
    client = MlflowClient(t.uri)
    client.create_registered_model("m")
    source = f"{client.get_run(parent.run_id).info.artifact_uri}"
    client.create_model_version("m", source, parent.run_id)

    new = tmp_path / "copied" / "lake"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    t2 = Tracker(TrackingConfig(experiment="e"), str(new))
    client = MlflowClient(t2.uri)
    assert client.get_run(parent.run_id).info.artifact_uri.startswith((new / "mlartifacts").as_uri())
    assert (tmp_path / "dl").mkdir() is None
    assert Path(client.download_artifacts(parent.run_id, "note.txt", str(tmp_path / "dl"))).read_text() == "hello"
    assert client.get_model_version("m", "1").source.startswith((new / "mlartifacts").as_uri())
    assert str(new / "images") in client.get_run(parent.run_id).inputs.dataset_inputs[0].dataset.source
    assert client.get_experiment(t2.experiment_id).artifact_location == (new / "mlartifacts").as_uri()
    assert tracking.relocate_store(new) == {}  # already in place: nothing to do

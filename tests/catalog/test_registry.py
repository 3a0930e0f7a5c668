"""catalog/registry.py: a folder published to MLflow's registry comes back by alias, version, latest
and run URI, from the store the caller names, else MLFLOW_TRACKING_URI, never a stale process URI."""
from __future__ import annotations

import mlflow
import pytest

from catalog.registry import is_model_uri, publish, resolve_model_path
from catalog.tracking import RunRef


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store with two published versions of "m" (a checkpoint folder each: supir.json + a marker)."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp / "art").as_uri())
    got = []
    for i, alias in ((1, "first"), (2, "second")):
        folder = tmp / f"ckpt{i}" / "inner"
        folder.mkdir(parents=True)
        (folder / "supir.json").write_text("{}")
        (folder / "which.txt").write_text(str(i))
        run = RunRef(uri, client.create_run(exp).info.run_id)
        got.append((publish(run, folder.parent, "m", ["champion", alias]), run.run_id))
    return uri, got


@pytest.mark.slow  # an MLflow SQLite store: ~20 s of migrations on 2 shared cores
def test_publish_then_resolve_by_alias_version_latest_and_run(store):
    uri, got = store
    assert [g[0] for g in got] == [("1", "models:/m@champion"), ("2", "models:/m@champion")]
    which = {u: (resolve_model_path(u, uri) / "which.txt").read_text()
             for u in ("models:/m@champion", "models:/m@first", "models:/m@latest", "models:/m/1", "models:/m/latest",
                       f"runs:/{got[0][1]}/model")}
    assert which == {"models:/m@champion": "2", "models:/m@first": "1", "models:/m@latest": "2", "models:/m/1": "1",
                     "models:/m/latest": "2", f"runs:/{got[0][1]}/model": "1"}
    with pytest.raises(ValueError, match="models:/<name>@<alias>"):
        resolve_model_path("models:/m", uri)


@pytest.mark.slow
def test_environment_wins_over_a_uri_left_in_the_process(store, tmp_path, monkeypatch):
    """The regression: MlflowClient(None) took a URI an earlier set_tracking_uri() left behind."""
    uri, _ = store
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")  # a store without "m"
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri wrote the variable too
        assert (resolve_model_path("models:/m@first") / "which.txt").read_text() == "1"
    finally:
        mlflow.set_tracking_uri(previous)


def test_folders_are_not_model_uris(tmp_path):
    assert resolve_model_path(str(tmp_path)) == tmp_path
    assert not is_model_uri("checkpoints/models:/x") and is_model_uri("runs:/abc/model")

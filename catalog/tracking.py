"""MLflow tracking: one parent run per pipeline invocation, one nested run per stage.

Everything goes through ``MlflowClient`` with explicit run ids, never the fluent API's global
"active run", so that a stage can log from a Ray worker or a Ray job's driver in another process:
the :class:`RunRef` (tracking URI + run id) is small and picklable. Nested runs carry the tag
``mlflow.parentRunId``, which the MLflow UI uses to draw the tree.

Default store: an embedded SQLite database in the lake (``<lake>/mlflow.db``), artifacts beside
it (``<lake>/mlartifacts``). ``MLFLOW_TRACKING_URI`` (or ``tracking.uri`` in the config)
overrides it.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from catalog import layout
from catalog.config import check

log = logging.getLogger(__name__)

# MLflow 3 opens an experiment without this tag on its GenAI overview ("Traces: 0"); tagged as
# model development it opens on the runs table
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# seconds between system-metric samples (CPU, RAM, disk, network, GPU when present) of a run: short
# enough that a stage of a few seconds (the demo's crawl of 8 URLs) still gets one
SYSTEM_METRICS_INTERVAL_S = 1.0

PACKAGES = (
    "ray", "torch", "torchvision", "diffusers", "transformers", "pyarrow", "datasets", "pyiqa",
    "pandas", "duckdb", "mlflow", "pillow", "numpy",
)


@dataclass
class TrackingConfig:
    """Where runs are logged."""

    # Tracking URI; empty means MLFLOW_TRACKING_URI if set, else sqlite:///<lake>/mlflow.db.
    uri: str = ""
    # Experiment name; runs of one project compare side by side in the MLflow UI.
    experiment: str = "supir"
    # Name of the pipeline's parent run; empty means "<pipeline> <timestamp>".
    run_name: str = ""
    # false turns tracking off entirely (stages still run and write the lake).
    enabled: bool = True

    def __post_init__(self):
        check(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")


def resolve_uri(cfg: TrackingConfig, lake_root: str) -> tuple[str, Optional[str]]:
    """(tracking URI, artifact location for a new experiment or None for the store's default)."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri, None
    if "://" in lake_root and not lake_root.startswith("file://"):
        raise ValueError(
            f"lake = {lake_root!r} is not a local folder, so the default embedded SQLite store cannot live in it: "
            "set tracking.uri (or MLFLOW_TRACKING_URI) to your MLflow server, e.g. http://mlflow:5000"
        )
    base = Path(lake_root.removeprefix("file://")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    relocate_store(base)
    return f"sqlite:///{base / layout.MLFLOW_DB}", (base / layout.MLFLOW_ARTIFACTS).as_uri()


# where the embedded store records absolute artifact locations (MLflow keeps no relative ones)
LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "source"),
             ("model_versions", "storage_location"), ("logged_models", "artifact_location"),
             ("datasets", "dataset_source"))


def relocate_store(base: Path) -> dict[str, str]:
    """Make a moved or copied lake's embedded MLflow store point at its own artifacts.

    MLflow stores artifact and model locations as absolute URIs: a copied lake's UI would serve
    the original's files (and break once it is deleted). The lake's experiments were created with
    ``<lake>/mlartifacts``; any other lake folder found there is rewritten to this one in every
    location column (runs, registered model versions, logged models, dataset sources). Returns
    {old folder: new folder}."""
    import sqlite3

    db = base / layout.MLFLOW_DB
    if not db.is_file():
        return {}
    new = str(base)
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        try:
            rows = con.execute("SELECT artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError:  # not (yet) an MLflow database
            return {}
        old = {loc.removeprefix("file://").removesuffix("/mlartifacts") for (loc,) in rows
               if loc and loc.startswith("file:///") and loc.endswith("/mlartifacts")}
        moved = {o: new for o in old if o != new}
        tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        with con:
            for o in moved:
                for table, column in LOCATIONS:
                    if table in tables:
                        con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE instr({column}, ?) > 0",
                                    (o + "/", new + "/", o + "/"))
    if moved:
        log.warning("MLflow store %s: artifact locations moved from %s to this lake", db, ", ".join(sorted(moved)))
    return moved


def git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        return sha + ("-dirty" if dirty.stdout.strip() else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


@dataclass(frozen=True)
class RunRef:
    """A run that any process can log to: picklable, holds no client."""

    uri: str
    run_id: str
    enabled: bool = True

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    # -- logging -------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.enabled or not metrics:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(_clean(k), float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        self.client().log_batch(self.run_id, metrics=batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled or not params:
            return
        from mlflow.entities import Param

        items = [Param(_clean(k), _param_value(v)) for k, v in params.items()]
        client = self.client()
        for i in range(0, len(items), 100):  # MLflow's batch limit
            client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        self.client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client().log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            self.client().log_text(self.run_id, text, name)

    def log_dict(self, obj: Any, name: str) -> None:
        if self.enabled:
            self.client().log_dict(self.run_id, obj, name)

    def log_image(self, image, name: str, step: int | None = None) -> None:
        """Log a PIL image as a PNG artifact ``name``; with ``step``, as MLflow's image ``name`` at
        that step (the UI shows a step slider per key)."""
        if not self.enabled:
            return
        if step is not None:
            self.client().log_image(self.run_id, image, key=name, step=step)
            return
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / Path(name).name
            image.save(p)
            parent = str(Path(name).parent)
            self.client().log_artifact(self.run_id, str(p), None if parent == "." else parent)

    @contextlib.contextmanager
    def system_metrics(self, node_id: str | None = None) -> Iterator[None]:
        """Sample this machine's CPU, RAM, disk, network (and GPU when present) into the run
        (``system/...`` metrics; ``node_id`` prefixes them, e.g. one per training rank)."""
        if not self.enabled:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, node_id=node_id,
                                       tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_inputs(self, tables: Mapping[str, tuple[str, str]], context: str = "input") -> None:
        """Lake tables this run read, as MLflow datasets: name -> (location, digest) (lineage in the UI)."""
        if not self.enabled or not tables:
            return
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for name, (location, digest) in tables.items():
            with warnings.catch_warnings():  # "can be interpreted in multiple ways" for local folders
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(location)
            entity = MetaDataset(source, name=name, digest=digest)._to_mlflow_entity()
            inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)]))
        self.client().log_inputs(self.run_id, datasets=inputs)

    def log_table(self, df, name: str) -> None:
        """Log a pandas DataFrame as a JSON table artifact (shown by the MLflow UI)."""
        if self.enabled:
            self.client().log_table(self.run_id, data=df, artifact_file=name)


class MetricLog:
    """Per-step metrics of a training loop for one MLflow run, buffered and sent in batches (one
    store write per flush instead of one per step).

    ``run``: a :class:`RunRef`; None or a disabled RunRef makes every call a no-op, so a loop logs
    the same way on every rank and with tracking off. :meth:`log` flushes by itself every
    ``flush_every`` calls; call :meth:`flush` at checkpoints and at the end."""

    def __init__(self, run: RunRef | None = None, flush_every: int = 10):
        check(isinstance(flush_every, int) and flush_every >= 1, "MetricLog.flush_every", flush_every,
              "an integer >= 1")
        self.run = run if run is not None and run.enabled else None
        self.flush_every = flush_every
        self.pending: list[Any] = []  # mlflow.entities.Metric
        self._calls = 0
        self._client = None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.pending += [Metric(_clean(k), float(v), ts, step) for k, v in metrics.items() if v is not None]
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        if self.run is None or not self.pending:
            return
        if self._client is None:
            self._client = self.run.client()
        for i in range(0, len(self.pending), 1000):  # MLflow's batch limit
            self._client.log_batch(self.run.run_id, metrics=self.pending[i : i + 1000])
        self.pending = []


def _clean(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / : only
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(key))[:250]


def _param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


class Tracker:
    """Creates the parent and stage runs of one pipeline invocation."""

    def __init__(self, cfg: TrackingConfig, lake_root: str):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.uri, self.artifact_location = resolve_uri(cfg, lake_root) if cfg.enabled else ("", None)
        self.experiment_id = self._experiment() if cfg.enabled else ""
        self.parent: RunRef | None = None

    def _experiment(self) -> str:
        from mlflow import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            try:
                exp_id = client.create_experiment(self.cfg.experiment, artifact_location=self.artifact_location)
            except Exception:  # created concurrently by another process
                exp = client.get_experiment_by_name(self.cfg.experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        if exp is None or exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
        return exp_id

    def _create(self, name: str, parent: RunRef | None, tags: Mapping[str, str]) -> RunRef:
        if not self.enabled:
            return RunRef("", "disabled", enabled=False)
        from mlflow import MlflowClient

        all_tags = {"mlflow.runName": name, "git_sha": git_sha(), "mlflow.source.git.commit": git_sha()}
        all_tags.update({f"version.{k}": v for k, v in package_versions().items()})
        if parent is not None and parent.enabled:
            all_tags["mlflow.parentRunId"] = parent.run_id
        all_tags.update(tags)
        run = MlflowClient(tracking_uri=self.uri).create_run(self.experiment_id, tags=all_tags, run_name=name)
        return RunRef(self.uri, run.info.run_id)

    def _end(self, ref: RunRef, ok: bool) -> None:
        if ref.enabled:
            ref.client().set_terminated(ref.run_id, "FINISHED" if ok else "FAILED")

    @contextlib.contextmanager
    def pipeline(self, name: str, config: Mapping[str, Any], config_yaml: str | None = None) -> Iterator[RunRef]:
        """The parent run; params = the resolved config, flattened."""
        from catalog.config import flatten

        run_name = self.cfg.run_name or f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        ref = self._create(run_name, None, {"pipeline": name})
        self.parent = ref
        ref.log_params(flatten(config))
        if config_yaml is not None:
            ref.log_text(config_yaml, "config.yaml")
        ok = False
        try:
            yield ref
            ok = True
        finally:
            self._end(ref, ok)

    @contextlib.contextmanager
    def stage(self, name: str, params: Mapping[str, Any] | None = None, state: str = "") -> Iterator[RunRef]:
        """A nested run for one stage, with its wall time logged at the end."""
        from catalog.config import flatten

        ref = self._create(name, self.parent, {"stage": name, "cache": state})
        if params:
            ref.log_params(flatten(params))
        t0 = time.time()
        ok = False
        try:
            with ref.system_metrics():
                yield ref
            ok = True
        finally:
            ref.log_metrics({"seconds": time.time() - t0})
            self._end(ref, ok)


def attach(uri: str, run_id: str) -> RunRef:
    """A RunRef for a run created elsewhere (for example in the Ray job's driver)."""
    return RunRef(uri, run_id, enabled=bool(uri))

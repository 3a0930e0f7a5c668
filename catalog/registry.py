"""The MLflow model registry, both ways: a model folder in, a local checkpoint folder out.

    version, uri = publish(run, "checkpoints/supir-demo", "supir", ["champion", "adaptor"])
    folder = resolve_model_path(uri)            # "models:/supir@champion" -> a downloaded folder

Registration (:func:`publish`, :func:`register_model`) is what training (pipelines/train.py) and
the conversion of the released weights (model/convert_official.py) do with a finished model;
resolution (:func:`resolve_model_path`) is what restoring and ``train.init_from`` do with a model
URI. The URIs: ``models:/<name>@<alias>`` (``@latest``: the newest version), ``models:/<name>/<version>``
(or ``/latest``) and ``runs:/<run id>/<path>``; anything else is a local folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from catalog.tracking import RunRef

MODEL_URI_PREFIXES = ("models:/", "runs:/")
CHECKPOINT_MARKER = "supir.json"  # the file model/checkpoint.py writes at the top of a checkpoint folder


def is_model_uri(uri: str) -> bool:
    """An MLflow model URI (``models:/...`` or ``runs:/...``), not a folder path."""
    return uri.startswith(MODEL_URI_PREFIXES)


def model_uri(name: str, alias: str) -> str:
    return f"models:/{name}@{alias}"


# ---------------------------------------------------------------------------------------------
# registration

def register_model(run: RunRef, name: str, aliases: Sequence[str], artifact_path: str = "model") -> str:
    """A new version of registered model ``name`` from the run's ``artifact_path``, with ``aliases``."""
    from mlflow.exceptions import MlflowException

    client = run.client()
    try:
        client.create_registered_model(name, description="SUPIR trainable parts (E_dr, adaptor, connectors); "
                                                          "load with model/checkpoint.py load_model")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code) and "already exists" not in str(e):
            raise
    source = f"{client.get_run(run.run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run.run_id)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def publish(run: RunRef, folder: str | Path, name: str, aliases: Sequence[str],
            artifact_path: str = "model") -> tuple[str, str]:
    """Log ``folder`` as the run's ``artifact_path`` and register it as a new version of ``name``
    with ``aliases`` (at least one); returns (version, the model URI of the first alias)."""
    if not aliases:
        raise ValueError(f"publish {name!r}: at least one alias is needed to name the version")
    run.client().log_artifacts(run.run_id, str(folder), artifact_path)
    version = register_model(run, name, aliases, artifact_path)
    return version, model_uri(name, aliases[0])


# ---------------------------------------------------------------------------------------------
# resolution

def resolve_model_path(uri: str, tracking_uri: Optional[str] = None) -> Path:
    """A local checkpoint folder for a folder path or an MLflow models:/ or runs:/ URI.

    ``models:/<name>@<alias>`` is a registered version by alias (:func:`publish` sets them);
    ``models:/<name>@latest`` and ``models:/<name>/latest`` the newest version. The tracking (and
    registry) URI is ``tracking_uri``, else MLFLOW_TRACKING_URI, else MLflow's default."""
    if not is_model_uri(uri):
        return Path(uri)
    import mlflow

    # explicit, as the docstring says: MlflowClient(None) would prefer a URI that an earlier
    # mlflow.set_tracking_uri() left in this process over the environment
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    source = model_version_source(uri, tracking_uri) if uri.startswith("models:/") else uri
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri))
    found = [p.parent for p in sorted(local.rglob(CHECKPOINT_MARKER))]
    if not found:
        raise FileNotFoundError(f"{uri}: no {CHECKPOINT_MARKER} in the downloaded artifacts")
    return found[0]


def model_version_source(uri: str, tracking_uri: Optional[str]) -> str:
    """The artifact source of a registered version, ``models:/<name>@<alias>``, ``models:/<name>/<version>``
    or ``.../latest``, looked up in the registry at ``tracking_uri`` (MLflow's own models:/ download
    reads aliases from the default registry only)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ref = uri[len("models:/"):]
    name, sep, which = ref.rpartition("@") if "@" in ref else ref.partition("/")
    if not sep:
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    if which.lower() == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise FileNotFoundError(f"{uri}: registered model {name!r} has no versions")
        return max(versions, key=lambda v: int(v.version)).source
    if sep == "@":
        return client.get_model_version_by_alias(name, which).source
    if which.isdigit():
        return client.get_model_version(name, which).source
    return client.get_latest_versions(name, [which])[0].source  # a stage name

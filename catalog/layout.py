"""The names of the lake's folders, written once: tables, their partitions and the other folders.

    lake.read(layout.FILTERED)                      # <lake>/filtered/
    lake.path(layout.MODELS)                        # <lake>/_models/
    layout.partition(layout.RESTORATIONS, run_id)   # "restorations/<run_id>"

Every other module (stages/, pipelines/, evaluation/) uses these names instead of string
literals; tests/catalog/test_layout.py reads their source and fails on a literal used as a lake path.
"""
from __future__ import annotations

# tables (their schemas: catalog/schemas.py TABLES)
SOURCES = "sources"
IMAGES = "images"
FILTERED = "filtered"
CAPTIONS = "captions"
PAIRS = "pairs"
RESTORATIONS = "restorations"
# baseline restorations (bicubic, Real-ESRGAN; RESTORATIONS' columns) of the same pairs. Not a partition
# of `restorations`: the restore stage owns that table through run_stage, whose Lake.begin clears it on
# a spec change
BASELINES = "baselines"
METRICS = "metrics"
TABLE_NAMES = (SOURCES, IMAGES, FILTERED, CAPTIONS, PAIRS, RESTORATIONS, BASELINES, METRICS)

# partitions of `pairs`, one per stage that writes pairs
DEGRADED = f"{PAIRS}/degraded"  # the degrade stage's
NEGATIVES = f"{PAIRS}/negative"  # the negatives stage's: training targets, not restoration inputs

# folders that are not tables
STAGE_RECORDS = "_stages"  # manifests of stages that write no table (training)
MODELS = "_models"  # models a stage builds for itself (the demo's tiny captioner)
PRIORS = "priors"  # stage 0's trained priors, <preset>-<digest>/
REPORTS = "reports"  # Table 1 and its figures, reports/<stage>/
TRAIN = "train"  # Ray Train runs and final models, train/<name>-<stage>/
QUARANTINE = "_quarantine"  # bad and stray parts are moved here, never deleted
MLFLOW_DB = "mlflow.db"  # the embedded MLflow store of a lake without a tracking server
MLFLOW_ARTIFACTS = "mlartifacts"
FOLDER_NAMES = (STAGE_RECORDS, MODELS, PRIORS, REPORTS, TRAIN, QUARANTINE, MLFLOW_DB, MLFLOW_ARTIFACTS)


def partition(table: str, key: str) -> str:
    """``"restorations", "ab12"`` -> ``"restorations/ab12"``: one partition of a table."""
    return f"{table}/{key}"


def stage_record(stage: str) -> str:
    """Where a stage without a table of its own keeps its manifest: ``_stages/<stage>``."""
    return f"{STAGE_RECORDS}/{stage}"

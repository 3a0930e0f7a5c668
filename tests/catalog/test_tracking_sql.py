"""MLflow runs (parent + nested, across processes) and DuckDB SQL over the lake and MLflow."""
import subprocess
import sys

import pyarrow as pa
import pytest

from catalog import sql
from catalog.lake import Lake
from catalog.tracking import Tracker, TrackingConfig, resolve_uri


@pytest.fixture()
def tracked(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lake_root = str(tmp_path / "lake")
    tracker = Tracker(TrackingConfig(experiment="t"), lake_root)
    with tracker.pipeline("full", {"lake": lake_root, "filter": {"min_side": 512}}) as parent:
        with tracker.stage("crawl", {"threads": 4}) as run:
            run.log_metrics({"status.ok": 5, "status.http_error": 2})
            # a Ray worker logs through a picklable RunRef from another process
            code = (f"from catalog.tracking import RunRef; RunRef({run.uri!r}, {run.run_id!r})"
                    ".log_metrics({'worker_metric': 7.0}, step=3)")
            subprocess.run([sys.executable, "-c", code], check=True)
    return tracker, parent, run, lake_root


def test_parent_and_nested_runs(tracked):
    from mlflow import MlflowClient

    tracker, parent, run, lake_root = tracked
    assert tracker.uri == f"sqlite:///{lake_root}/mlflow.db"
    c = MlflowClient(tracker.uri)
    child = c.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.data.metrics["worker_metric"] == 7.0
    assert child.data.params["threads"] == "4"
    assert "git_sha" in child.data.tags and "version.torch" in child.data.tags
    p = c.get_run(parent.run_id)
    assert p.data.params["filter.min_side"] == "512"
    assert p.info.status == "FINISHED"


def test_failed_stage_marks_run_failed(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(TrackingConfig(), str(tmp_path / "lake"))
    with pytest.raises(RuntimeError):
        with tracker.pipeline("full", {}):
            with tracker.stage("crawl") as run:
                raise RuntimeError("boom")
    assert MlflowClient(tracker.uri).get_run(run.run_id).info.status == "FAILED"


def test_env_uri_overrides(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert Tracker(TrackingConfig(), str(tmp_path / "lake")).uri == uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ValueError, match="set tracking.uri"):
        resolve_uri(TrackingConfig(), "s3://bucket/lake")  # no embedded SQLite inside an object store


def test_sql_views_and_canned_queries(tracked, capsys):
    tracker, parent, run, lake_root = tracked
    lake = Lake(lake_root)
    lake.write_part("images", pa.table({"url": ["a", "b", "c"], "status": ["ok", "ok", "http_error"], "num_bytes": [10, 20, None]}))
    lake.write_part("filtered", pa.table({"image_id": ["x", "y"], "keep": [True, False], "reason": [None, "min_side:300<512"]}))
    con = sql.connect(lake_root)
    assert con.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0] == 2
    rows = con.execute(sql.CANNED["status_counts"]).fetchall()
    assert ("crawl", "ok", 5) in [(r[1], r[2], r[3]) for r in rows]
    assert sorted(con.execute(sql.CANNED["drop_reasons"]).fetchall()) == [("crawl", "http_error", 1), ("filter", "min_side", 1)]
    assert con.execute("SELECT value FROM mlflow_params WHERE key = 'threads'").fetchone()[0] == "4"
    assert con.execute("SELECT count(*) FROM pairs").fetchone()[0] == 0  # unwritten tables are empty views
    # the command line prints a table
    assert sql.main(["--lake", lake_root, "SELECT status, count(*) AS n FROM images GROUP BY 1 ORDER BY 1"]) == 0
    out = capsys.readouterr().out
    assert "http_error" in out and "status" in out
    assert sql.main(["--lake", lake_root, "SELEC nonsense"]) == 2


def test_sql_is_read_only_unless_asked(tmp_path, capsys):
    """COPY over a lake part, writing other files, ATTACH, reading files outside the lake and
    turning access back on are refused; --writable lets the operator write on purpose."""
    lake_root = str(tmp_path / "lake")  # no MLflow store yet: empty mlflow_* views
    lake = Lake(lake_root)
    part = lake.write_part("images", pa.table({"url": ["a", "b"], "status": ["ok", "ok"]}))
    with open(part, "rb") as f:
        before = f.read()
    secret = tmp_path / "secret.csv"
    secret.write_text("k\nsecret-value\n")
    def q(s) -> str:
        return "'" + str(s).replace("'", "''") + "'"

    attacks = [f"COPY (SELECT * FROM images WHERE false) TO {q(part)} (FORMAT parquet, USE_TMP_FILE false)",
               f"COPY (SELECT 1) TO {q(tmp_path / 'out.csv')}", f"ATTACH {q(tmp_path / 'x.duckdb')}",
               f"SELECT * FROM read_csv({q(secret)})", "SET enable_external_access = true"]
    for attack in attacks:
        assert sql.main(["--lake", lake_root, attack]) == 2, attack
        assert "SQL error" in capsys.readouterr().err
    with open(part, "rb") as f:
        assert f.read() == before and not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "x.duckdb").exists()
    assert sql.connect(lake_root).execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0] >= 2
    assert sql.main(["--lake", lake_root, "--writable", f"COPY (SELECT 1 AS one) TO {q(tmp_path / 'out.csv')}"]) == 0
    assert (tmp_path / "out.csv").read_text().strip() == "one\n1"


def test_metric_log_sends_batches_and_does_nothing_without_an_enabled_run(tmp_path, monkeypatch):
    """catalog.tracking.MetricLog, the one per-step metric buffer of stage 0 and the training stages."""
    from mlflow import MlflowClient

    from catalog.config import ConfigError
    from catalog.tracking import MetricLog, RunRef

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(TrackingConfig(), str(tmp_path / "lake"))
    with tracker.pipeline("train", {}), tracker.stage("train") as run:
        client = MlflowClient(tracker.uri)
        history = lambda key: sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, key))  # noqa: E731
        metrics = MetricLog(run, flush_every=3)
        for step in range(1, 6):
            metrics.log({"loss": 1.0 / step, "lr": 0.1}, step)
            assert len(history("loss")) == (3 if step >= 3 else 0), step  # one write after the third call
        metrics.flush()
        assert history("loss") == [(s, 1.0 / s) for s in range(1, 6)] and len(history("lr")) == 5
        assert metrics.pending == []
        for off in (MetricLog(None), MetricLog(RunRef(run.uri, run.run_id, enabled=False), flush_every=1)):
            off.log({"off_metric": 1.0}, 1)
            off.flush()
        assert history("off_metric") == []
    with pytest.raises(ConfigError, match="MetricLog.flush_every"):
        MetricLog(None, flush_every=0)

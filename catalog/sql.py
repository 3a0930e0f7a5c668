"""DuckDB SQL over the lake and the MLflow store.

Views: one per lake table (``images``, ``filtered``, ``captions``, ``pairs``, ``restorations``,
``metrics``, ``sources``) reading its Parquet parts, and ``mlflow_runs``, ``mlflow_params``,
``mlflow_metrics`` (full history), ``mlflow_tags`` from the tracking store (read with Python's
sqlite3 for the embedded store, through MLflow's API otherwise: DuckDB's sqlite extension
cannot be installed offline).

    python -m catalog.sql "SELECT status, count(*) FROM images GROUP BY 1"
    python -m catalog.sql --query status_counts
    python -m catalog.sql --list
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from typing import Optional

import duckdb
import pandas as pd
import pyarrow as pa

from catalog.lake import Lake
from catalog.schemas import TABLES

CANNED: dict[str, str] = {
    # rows per status logged by every stage run, newest pipeline run first
    "status_counts": """
        SELECT p.name AS pipeline_run, r.name AS stage, replace(m.key, 'status.', '') AS status,
               CAST(m.value AS BIGINT) AS rows
        FROM mlflow_metrics_latest m
        JOIN mlflow_runs r USING (run_id)
        LEFT JOIN mlflow_runs p ON p.run_id = r.parent_run_id
        WHERE m.key LIKE 'status.%'
        ORDER BY p.start_time DESC NULLS LAST, r.start_time, status""",
    # why images were dropped by crawl and filter
    "drop_reasons": """
        SELECT 'crawl' AS stage, status AS reason, count(*) AS images FROM images WHERE status <> 'ok' GROUP BY 1, 2
        UNION ALL
        SELECT 'filter', split_part(reason, ':', 1), count(*) FROM filtered WHERE NOT keep GROUP BY 1, 2
        ORDER BY stage, images DESC""",
    # the lake at a glance
    "images_by_status": "SELECT status, count(*) AS n, sum(num_bytes) AS bytes FROM images GROUP BY 1 ORDER BY 2 DESC",
    # paper Table 1 shape: degradation x method x metric, mean over pairs (evaluation/report.py uses it)
    "table1": """
        SELECT coalesce(split, 'all') AS split, coalesce(degradation, 'unknown') AS degradation, method, metric,
               avg(value) FILTER (WHERE status = 'ok') AS mean,
               count(*) FILTER (WHERE status = 'ok') AS n,
               CASE WHEN count(*) FILTER (WHERE status = 'ok') > 0 THEN 'ok'
                    WHEN count(*) FILTER (WHERE status = 'unavailable') > 0 THEN 'unavailable'
                    ELSE 'error' END AS status
        FROM metrics
        GROUP BY ALL
        ORDER BY split, degradation, metric, method""",
    # the same, one column per method
    "table1_wide": """
        PIVOT (SELECT coalesce(split, 'all') AS split, coalesce(degradation, 'unknown') AS degradation, metric,
                      method, avg(value) FILTER (WHERE status = 'ok') AS mean FROM metrics GROUP BY ALL)
        ON method USING first(mean) ORDER BY split, degradation, metric""",
    # compare pipeline runs by their latest metrics
    "runs": """
        SELECT r.run_id, r.name, r.status, r.start_time, count(m.key) AS metrics
        FROM mlflow_runs r LEFT JOIN mlflow_metrics_latest m USING (run_id)
        WHERE r.parent_run_id IS NULL GROUP BY ALL ORDER BY r.start_time DESC""",
}


def _mlflow_frames(uri: str) -> dict[str, pd.DataFrame]:
    """runs, params, metrics (history), tags as DataFrames."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if not os.path.exists(path):
            return _empty_mlflow()
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            runs = pd.read_sql_query(
                """SELECT r.run_uuid AS run_id, r.name, r.status, r.experiment_id, e.name AS experiment,
                          r.start_time, r.end_time, t.value AS parent_run_id
                   FROM runs r JOIN experiments e USING (experiment_id)
                   LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'
                   WHERE r.lifecycle_stage = 'active'""",
                con,
            )
            params = pd.read_sql_query("SELECT run_uuid AS run_id, key, value FROM params", con)
            metrics = pd.read_sql_query(
                "SELECT run_uuid AS run_id, key, value, step, timestamp FROM metrics", con
            )
            tags = pd.read_sql_query("SELECT run_uuid AS run_id, key, value FROM tags", con)
        finally:
            con.close()
    else:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        rows, prm, met, tg = [], [], [], []
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id], max_results=50000):
                i = run.info
                rows.append(dict(run_id=i.run_id, name=i.run_name, status=i.status, experiment_id=exp.experiment_id,
                                 experiment=exp.name, start_time=i.start_time, end_time=i.end_time,
                                 parent_run_id=run.data.tags.get("mlflow.parentRunId")))
                prm += [dict(run_id=i.run_id, key=k, value=v) for k, v in run.data.params.items()]
                met += [dict(run_id=i.run_id, key=k, value=v, step=0, timestamp=i.end_time) for k, v in run.data.metrics.items()]
                tg += [dict(run_id=i.run_id, key=k, value=v) for k, v in run.data.tags.items()]
        runs, params, metrics, tags = (pd.DataFrame(x) for x in (rows, prm, met, tg))
        if runs.empty:
            return _empty_mlflow()
    for col in ("start_time", "end_time"):
        runs[col] = pd.to_datetime(runs[col], unit="ms", utc=True)
    return {"mlflow_runs": runs, "mlflow_params": params, "mlflow_metrics": metrics, "mlflow_tags": tags}


def _empty_mlflow() -> dict[str, pd.DataFrame]:
    return {
        "mlflow_runs": pd.DataFrame(
            {c: pd.Series(dtype=t) for c, t in [("run_id", str), ("name", str), ("status", str), ("experiment_id", str),
                                                 ("experiment", str), ("start_time", "datetime64[ns, UTC]"),
                                                 ("end_time", "datetime64[ns, UTC]"), ("parent_run_id", str)]}
        ),
        "mlflow_params": pd.DataFrame({"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str), "value": pd.Series(dtype=str)}),
        "mlflow_metrics": pd.DataFrame({"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str), "value": pd.Series(dtype=float),
                                        "step": pd.Series(dtype="int64"), "timestamp": pd.Series(dtype="int64")}),
        "mlflow_tags": pd.DataFrame({"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str), "value": pd.Series(dtype=str)}),
    }


def connect(lake_root: str, tracking_uri: Optional[str] = None, writable: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per lake table and per MLflow entity.

    Read-only unless ``writable``: the tables are handed to DuckDB as Arrow datasets (pyarrow reads
    the parts), then DuckDB's own file access is switched off (``enable_external_access=false``:
    no COPY TO, ATTACH, read_csv of other files, extension installs) and the configuration is
    locked, so a query cannot turn it back on. ``allowed_paths`` is not used: DuckDB lets a query
    write to an allowed path, and ``COPY ... TO '<part>' (USE_TMP_FILE false)`` would replace a part."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    lake = Lake(lake_root)
    con = duckdb.connect()
    for name, schema in TABLES.items():
        files = lake.files(name)
        if files:
            # union by name: parts may differ in optional columns (iqa_<metric>, ...)
            unified = pa.unify_schemas([pq.read_schema(f, filesystem=lake.fs) for f in files],
                                       promote_options="permissive")
            con.register(f"_{name}_parts", pads.dataset(files, schema=unified, format="parquet", filesystem=lake.fs))
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_parts")
        else:  # an empty view with the table's columns, so canned queries still run
            con.register(f"_{name}_empty", schema.empty_table())
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_empty")
    if tracking_uri is None:
        from catalog.tracking import TrackingConfig, resolve_uri

        tracking_uri = resolve_uri(TrackingConfig(), lake_root)[0]
    for name, df in _mlflow_frames(tracking_uri).items():
        con.register(f"_{name}_df", df)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_df")
    con.execute(
        """CREATE VIEW mlflow_metrics_latest AS
           SELECT run_id, key, arg_max(value, step) AS value, max(step) AS step
           FROM mlflow_metrics GROUP BY run_id, key"""
    )
    if not writable:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m catalog.sql", description=__doc__.split("\n\n")[0])
    ap.add_argument("sql", nargs="?", help="a SQL statement")
    ap.add_argument("--query", "-q", choices=sorted(CANNED), help="run a canned query")
    ap.add_argument("--list", action="store_true", help="list views and canned queries")
    ap.add_argument("--lake", default=os.environ.get("SUPIR_LAKE", "lake"), help="lake root (default: $SUPIR_LAKE or ./lake)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the lake's)")
    ap.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    ap.add_argument("--writable", action="store_true",
                    help="let the SQL read and write files (COPY TO, ATTACH, read_csv, ...): for an operator "
                         "who means to; by default the connection can read only the lake's views")
    args = ap.parse_args(argv)
    con = connect(args.lake, args.tracking_uri, writable=args.writable)
    if args.list:
        print("views:", ", ".join(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()))
        for k, v in CANNED.items():
            print(f"\n-- {k}\n{v.strip()}")
        return 0
    sql = CANNED[args.query] if args.query else args.sql
    if not sql:
        ap.error("give a SQL statement or --query NAME (see --list)")
    try:
        rel = con.sql(sql)
    except duckdb.Error as e:
        print(f"SQL error: {e}", file=sys.stderr)
        return 2
    if rel is None:
        return 0
    if args.csv:
        rel.df().to_csv(sys.stdout, index=False)
    else:
        rel.show(max_width=200, max_rows=200)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SQL over a lake on S3: the lake writes its parts through pyarrow's S3 filesystem, and catalog.sql
reads them the same way, with only the declared dependencies (no s3fs, no DuckDB httpfs extension,
which cannot be installed offline). The object store is moto's S3 server on loopback."""
import socket

import pyarrow as pa
import pytest

from catalog import sql
from catalog.lake import Lake

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch):
    """A loopback S3 endpoint; pyarrow finds it through AWS_ENDPOINT_URL, as a user's MinIO or
    another S3-compatible store would be configured."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                     allow_bucket_creation=True).create_dir("bucket")
    yield port
    server.stop()


def test_sql_over_an_s3_lake(s3, tmp_path, capsys):
    root = "s3://bucket/lake"
    lake = Lake(root)
    assert not lake.local and lake.marked()
    part = lake.write_part("images", pa.table({"url": ["a", "b", "c"], "status": ["ok", "ok", "http_error"],
                                               "num_bytes": [10, 20, None]}))
    assert part.startswith("bucket/lake/images/part-")
    lake.write_part("filtered", pa.table({"image_id": ["x", "y"], "keep": [True, False], "reason": [None, "min_side:300<512"]}))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"  # an s3 lake needs a tracking server or URI of its own
    con = sql.connect(root, tracking)
    assert con.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0] == 2
    assert sorted(con.execute(sql.CANNED["drop_reasons"]).fetchall()) == [("crawl", "http_error", 1), ("filter", "min_side", 1)]
    assert sql.main(["--lake", root, "--tracking-uri", tracking, "SELECT status, count(*) AS n FROM images GROUP BY 1"]) == 0
    assert "http_error" in capsys.readouterr().out
    # read-only holds on S3 too: DuckDB itself cannot reach files, the parts stay as written
    before = lake.fs.open_input_stream(part).read()
    assert sql.main(["--lake", root, "--tracking-uri", tracking, "COPY (SELECT 1) TO 's3://bucket/lake/images/x.parquet'"]) == 2
    assert lake.fs.open_input_stream(part).read() == before and lake.files("images") == [part]

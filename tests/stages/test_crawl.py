"""Crawl stage: every fault of a loopback server ends in the right status; the address guard."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.config import ConfigError
from catalog.schemas import IMAGE_STATUSES, IMAGES
from stages import crawl_http
from stages.crawl import (
    CrawlConfig,
    Fetcher,
    apply_duplicates,
    images_table,
    inspect_image,
    mark_duplicates,
    read_sources,
    sniff_format,
)
from tests.support.http_faults import (
    FaultServer,
    drip,
    huge_png,
    not_found,
    redirect,
    respond,
    sequence,
    slow,
    stream,
)

MAX_BYTES = 2_000_000  # the shared photos are <= 1.3 MB


def cfg(**kw) -> CrawlConfig:
    base = {"threads": 8, "timeout_s": 0.5, "retries": 1, "backoff_s": 0.05, "max_bytes": MAX_BYTES,
            "allow_private_addresses": True}
    return CrawlConfig(**{**base, **kw})


def batch_of(urls: list[str], local: list[bool] | None = None) -> dict[str, np.ndarray]:
    """Source rows; ``local`` marks the rows read_sources made from a local spec (default: none)."""
    n = len(urls)
    return {"url": np.array(urls, dtype=object), "alt_text": np.array([f"alt {i}" for i in range(n)], dtype=object),
            "source": np.array(["test"] * n, dtype=object), "row": np.arange(n, dtype=np.int64),
            "local": np.array(local if local is not None else [False] * n, dtype=object)}


@pytest.fixture(scope="module")
def server(photos):
    a, b = photos[0].read_bytes(), photos[1].read_bytes()
    big = b * (MAX_BYTES // len(b) + 1)
    with FaultServer() as s:
        s.add("/good/a.jpg", respond(a))
        s.add("/good/b.jpg", respond(b))
        s.add("/dup/a.jpg", respond(a))
        s.add("/404.jpg", not_found())
        s.add("/flaky.jpg", sequence(respond(b"oops", 500, "text/plain"), respond(b)))
        s.add("/busy.jpg", sequence(respond(b"", 429), respond(photos[3].read_bytes())))
        s.add("/down.jpg", respond(b"down", 503, "text/plain"))
        s.add("/slow.jpg", slow(1.5, respond(a)))
        s.add("/cut.jpg", respond(a[:5000], content_length=len(a)))
        s.add("/truncated.jpg", respond(a[: len(a) // 2]))
        s.add("/page.html", respond(b"<html><body>hi</body></html>", content_type="text/html; charset=utf-8"))
        s.add("/fake.jpg", respond(b"<html><body>not a jpeg</body></html>"))
        s.add("/bomb.png", respond(huge_png(), content_type="image/png"))
        s.add("/loop/a", redirect("/loop/b"))
        s.add("/loop/b", redirect("/loop/a"))
        s.add("/hop.jpg", redirect("/good/b.jpg", 301))
        s.add("/big.jpg", respond(big))
        s.add("/big-stream.jpg", stream(big))
        yield s


# path -> (status, http_status, requests the server saw)
EXPECTED = {
    "/good/a.jpg": ("ok", 200, 1),
    "/dup/a.jpg": ("ok", 200, 1),
    "/404.jpg": ("http_error", 404, 1),
    "/flaky.jpg": ("ok", 200, 2),
    "/busy.jpg": ("ok", 200, 2),
    "/down.jpg": ("http_error", 503, 2),
    "/slow.jpg": ("timeout", None, 2),
    "/cut.jpg": ("connection_error", None, 2),
    "/truncated.jpg": ("decode_error", 200, 1),
    "/page.html": ("not_image", 200, 1),
    "/fake.jpg": ("not_image", 200, 1),
    "/bomb.png": ("decompression_bomb", 200, 1),
    "/loop/a": ("too_many_redirects", None, 2),  # a -> b -> a, then over max_redirects=2
    "/hop.jpg": ("ok", 200, 1),
    "/big.jpg": ("too_large", 200, 1),
    "/big-stream.jpg": ("too_large", 200, 1),
}


def test_faults_end_in_their_status(server, photos, tmp_path):
    server.reset_counts()
    missing = (tmp_path / "missing.jpg").as_uri()
    urls = [server.url(p) for p in EXPECTED] + [
        photos[2].as_uri(), missing, "ftp://example.invalid/a.jpg", "not a url", "",
    ]
    local = [u.startswith("file:") for u in urls]  # as if named as image files in crawl.sources
    out = Fetcher(cfg(max_redirects=2))(batch_of(urls, local))

    assert set(out) == set(IMAGES.names)
    assert len(out["status"]) == len(urls)
    got = {u: (s, h) for u, s, h in zip(out["url"], out["status"], out["http_status"])}
    errors = dict(zip(out["url"], out["error"]))
    for path, (status, http_status, requests) in EXPECTED.items():
        url = server.url(path)
        assert got[url] == (status, http_status), (path, errors[url])
        assert server.counts[path] == requests, path
        assert (status == "ok") == (errors[url] is None), path
    assert server.counts["/loop/b"] == 1
    assert got[photos[2].as_uri()] == ("ok", None)
    assert got[missing][0] == "bad_url"
    for bad in ("ftp://example.invalid/a.jpg", "not a url", ""):
        assert got[bad][0] == "bad_url"
    assert set(out["status"]) <= set(IMAGE_STATUSES)

    ok = out["status"] == "ok"
    a, b = photos[0].read_bytes(), photos[1].read_bytes()
    ids = dict(zip(out["url"], out["image_id"]))
    assert ids[server.url("/good/a.jpg")] == ids[server.url("/dup/a.jpg")] == hashlib.sha256(a).hexdigest()
    assert ids[server.url("/hop.jpg")] == ids[server.url("/flaky.jpg")] == hashlib.sha256(b).hexdigest()
    assert all(d is None for d in out["bytes"][~ok]) and all(i is None for i in out["image_id"][~ok])
    assert all(len(d) == n for d, n in zip(out["bytes"][ok], out["num_bytes"][ok]))
    assert all(min(w, h) == 1024 for w, h in zip(out["width"][ok], out["height"][ok]))  # the photos' short side
    assert set(out["format"][ok]) == {"JPEG"}
    assert list(out["alt_text"][:2]) == ["alt 0", "alt 1"] and list(out["row"]) == list(range(len(urls)))

    table = images_table(out)
    assert table.schema == IMAGES and table.num_rows == len(urls)
    dups = mark_duplicates(table)
    rows = {u: r for u, r in zip(out["url"], out["row"])}
    assert dups == {rows[server.url("/dup/a.jpg")]: rows[server.url("/good/a.jpg")],
                    rows[server.url("/hop.jpg")]: rows[server.url("/flaky.jpg")]}
    marked = apply_duplicates(table, dups).to_pydict()
    i = marked["url"].index(server.url("/dup/a.jpg"))
    assert marked["status"][i] == "duplicate" and marked["bytes"][i] is None
    assert marked["error"][i] == f"duplicate_of:{rows[server.url('/good/a.jpg')]}"
    assert marked["status"].count("duplicate") == 2


def test_private_addresses_refused(server):
    server.reset_counts()
    urls = [server.url("/good/a.jpg"), server.url("/good/a.jpg", host="localhost"),
            f"http://[::1]:{server.port}/good/a.jpg", "http://10.0.0.1/a.jpg", "http://169.254.169.254/latest",
            "http://192.168.1.1/a.jpg", "http://[::ffff:127.0.0.1]/a.jpg", "http://0.0.0.0/a.jpg"]
    out = Fetcher(cfg(allow_private_addresses=False))(batch_of(urls))
    assert list(out["status"]) == ["forbidden_address"] * len(urls), list(out["error"])
    assert server.counts["/good/a.jpg"] == 0


def test_redirect_into_private_network_refused(server, monkeypatch):
    """With the pre-connect lookup bypassed (DNS rebinding), the socket check still refuses."""
    monkeypatch.setattr(crawl_http, "check_host", lambda host, port: None)
    server.reset_counts()
    out = Fetcher(cfg(allow_private_addresses=False))(batch_of([server.url("/hop.jpg")]))
    assert out["status"][0] == "forbidden_address", out["error"][0]
    assert sum(server.counts.values()) == 0


def test_bomb_is_refused_from_the_header():
    data = huge_png()
    assert len(data) < 100_000
    with pytest.raises(crawl_http.FetchError) as e:
        inspect_image(data, cfg())
    assert e.value.status == "decompression_bomb"  # Pillow's own limit (179 MP) fires at open
    with pytest.raises(crawl_http.FetchError) as e:
        inspect_image(data, cfg(max_pixels=10**9))
    assert e.value.status == "decompression_bomb"
    with pytest.raises(crawl_http.FetchError) as e:  # ours (80 MP by default) fires below Pillow's
        inspect_image(huge_png(9000, 9000), cfg())
    assert e.value.status == "decompression_bomb" and "9000x9000" in e.value.error


def test_sniff_format():
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"GIF89a") == "GIF"
    assert sniff_format(b"II*\x00") == "TIFF"
    assert sniff_format(b"<html>") is None


def test_formats_and_config_checks(photos):
    png = pytest.importorskip("PIL.Image").new("RGB", (8, 8))
    import io

    buf = io.BytesIO()
    png.save(buf, "PNG")
    with pytest.raises(crawl_http.FetchError) as e:
        inspect_image(buf.getvalue(), cfg(formats=["JPEG"]))
    assert e.value.status == "not_image"
    for bad, field in (({"threads": 0}, "crawl.threads"), ({"formats": ["XYZ"]}, "crawl.formats"),
                       ({"timeout_s": 0}, "crawl.timeout_s"), ({"retries": -1}, "crawl.retries"),
                       ({"sources": [""]}, "crawl.sources")):
        with pytest.raises(ConfigError, match=field):
            CrawlConfig(**bad)


def test_fetcher_pickles_after_use(server):
    fetcher = Fetcher(cfg())
    fetcher(batch_of([server.url("/good/a.jpg")]))
    clone = pickle.loads(pickle.dumps(fetcher))
    assert clone(batch_of([server.url("/good/a.jpg")]))["status"][0] == "ok"
    table = fetcher(pa.table({"url": [server.url("/good/b.jpg")], "row": [7]}))
    assert table.schema == IMAGES and table.column("row").to_pylist() == [7]


@pytest.mark.parametrize("fast", [True, False])
def test_jpeg_verify_modes_agree(photos, fast):
    data = photos[0].read_bytes()
    width, height, fmt = inspect_image(data, cfg(fast_jpeg_verify=fast))
    assert fmt == "JPEG" and min(width, height) == 1024  # full size from the header, not the draft
    with pytest.raises(crawl_http.FetchError) as e:
        inspect_image(data[: len(data) * 3 // 4], cfg(fast_jpeg_verify=fast))
    assert e.value.status == "decode_error"


def _fetch_within(fetcher: Fetcher, batch: dict, seconds: float) -> dict:
    """Run the fetcher in a thread and fail (instead of hanging the suite) if it blocks."""
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(out=fetcher(batch)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"fetch still blocked after {seconds}s"
    return box["out"]


def test_url_lists_read_no_local_files(server, photos, tmp_path):
    """Rows of a URL list are http(s) only: file://, hfds://, paths, /dev/zero and a FIFO each end
    with a status, none is read, no error quotes file content; opting in with local_roots reads
    only inside the roots; regular files only, even for sources the user named."""
    datasets = pytest.importorskip("datasets")
    private = tmp_path / "private" / "secret.jpg"
    private.parent.mkdir()
    private.write_bytes(photos[0].read_bytes())
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    ds = datasets.Dataset.from_dict({"image": [{"bytes": photos[1].read_bytes(), "path": None}]},
                                    features=datasets.Features({"image": datasets.Image()}))
    ds.save_to_disk(str(tmp_path / "ds"))
    hfds = f"hfds://{tmp_path / 'ds'}?split=train&column=image#0"
    rows = [server.url("/good/a.jpg"), secret.as_uri(), private.as_uri(), "/proc/self/environ", "../private.jpg",
            hfds, "file:///dev/zero", fifo.as_uri(), f"file://localhost{secret}"]
    (tmp_path / "urls.txt").write_text("\n".join(rows) + "\n")
    sources = read_sources(cfg(sources=[str(tmp_path / "urls.txt")]))
    assert sources.column("local").to_pylist() == [False] * len(rows)
    batch = {k: np.array(v, dtype=object) for k, v in sources.to_pydict().items()}

    out = _fetch_within(Fetcher(cfg()), batch, 30)
    status = dict(zip(out["url"], out["status"]))
    assert status.pop(server.url("/good/a.jpg")) == "ok"
    assert set(status.values()) == {"bad_url"}, dict(zip(out["url"], out["error"]))
    assert all(b is None for b in out["bytes"][1:])
    assert not any("root:" in (e or "") for e in out["error"])

    # the opt-in reads inside its roots only
    out = _fetch_within(Fetcher(cfg(local_roots=[str(private.parent)])), batch, 30)
    status = dict(zip(out["url"], out["status"]))
    assert status[private.as_uri()] == "ok" and status[secret.as_uri()] == "bad_url"
    assert (tmp_path / "private" / ".." / "passwd").exists()
    escaped = f"file://{private.parent}/../passwd"
    assert _fetch_within(Fetcher(cfg(local_roots=[str(private.parent)])), batch_of([escaped]), 30)["status"][0] \
        == "bad_url"

    # named by the user (local): special files are refused without blocking, text is not quoted
    named = [secret.as_uri(), "file:///dev/zero", fifo.as_uri(), private.as_uri()]
    out = _fetch_within(Fetcher(cfg()), batch_of(named, [True] * 4), 30)
    assert list(out["status"]) == ["not_image", "bad_url", "bad_url", "ok"], list(out["error"])
    assert "not a regular file" in out["error"][1] and "not a regular file" in out["error"][2]
    assert not any("root:" in (e or "") for e in out["error"])


def test_hf_image_cells_with_a_path_outside_the_dataset_are_not_read(tmp_path, photos):
    pytest.importorskip("datasets")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(photos[0].read_bytes())
    table = pa.table({"image": pa.array([{"bytes": None, "path": str(outside)}],
                                        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    # a data folder as the hub serves it: the features say Image, the cell holds only a path
    features = {"info": {"features": {"image": {"_type": "Image"}}}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(features).encode()})
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    sources = read_sources(cfg(sources=["hf:" + str(tmp_path / "ds")]))
    assert sources.column("local").to_pylist() == [True]
    batch = {k: np.array(v, dtype=object) for k, v in sources.to_pydict().items()}
    out = Fetcher(cfg())(batch)
    assert out["status"][0] == "bad_url" and "outside the dataset" in out["error"][0]
    assert Fetcher(cfg(local_roots=[str(tmp_path)]))(batch)["status"][0] == "ok"


def test_slow_drip_is_bounded_by_the_download_deadline(server, photos):
    """40 bytes of body after the headers, one byte every 50 ms: every read is quick, the whole is not."""
    server.add("/drip.jpg", drip(photos[0].read_bytes()[:40], 0.05))
    server.reset_counts()
    start = time.monotonic()
    out = Fetcher(cfg(download_timeout_s=0.5, retries=0))(batch_of([server.url("/drip.jpg")]))
    took = time.monotonic() - start
    assert out["status"][0] == "timeout", out["error"][0]
    assert took < 3, took  # the drip alone lasts > 6 s; this bounds a hang, it is not a benchmark


@pytest.mark.parametrize("ip", ["::127.0.0.1", "::7f00:1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "2002:7f00:1::1",
                                "2002:a9fe:a9fe::", "::ffff:0:7f00:1", "::ffff:0:a00:1", "64:ff9b:1::1",
                                "::ffff:127.0.0.1", "2001:0:4136:e378:8000:63bf:80ff:fffe"])
def test_ipv6_that_embeds_a_private_ipv4_is_not_public(ip):
    assert not crawl_http.is_public(ip)


@pytest.mark.parametrize("ip", ["2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1", "8.8.8.8"])
def test_public_addresses_stay_public(ip):
    assert crawl_http.is_public(ip)

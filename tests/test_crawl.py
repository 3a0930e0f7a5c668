"""Crawl stage: every fault of a loopback server ends in the right status; the address guard."""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pyarrow as pa
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
    sniff_format,
)
from tests.http_faults import (
    FaultServer,
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


def batch_of(urls: list[str]) -> dict[str, np.ndarray]:
    n = len(urls)
    return {"url": np.array(urls, dtype=object), "alt_text": np.array([f"alt {i}" for i in range(n)], dtype=object),
            "source": np.array(["test"] * n, dtype=object), "row": np.arange(n, dtype=np.int64)}


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
    out = Fetcher(cfg(max_redirects=2))(batch_of(urls))

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

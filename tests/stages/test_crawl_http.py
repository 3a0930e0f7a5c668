"""The crawler's manners: X-Robots-Tag opt-outs (img2dataset's defaults), a User-Agent naming the
project, Retry-After on 429/503 with jittered backoff. A loopback server (tests/support/http_faults.py)."""
from __future__ import annotations

import time
import types

import numpy as np
import pytest

from catalog.config import ConfigError
from catalog.schemas import IMAGE_STATUSES
from stages import crawl_http
from stages.crawl import CrawlConfig, Fetcher
from stages.crawl_http import HttpClient, opted_out, retry_after
from tests.support.http_faults import FaultServer, respond, sequence

UA = CrawlConfig().user_agent


def cfg(**kw) -> CrawlConfig:
    base = {"threads": 4, "timeout_s": 2.0, "retries": 2, "backoff_s": 0.05, "allow_private_addresses": True}
    return CrawlConfig(**{**base, **kw})


def fetch(urls: list[str], **kw) -> dict[str, np.ndarray]:
    n = len(urls)
    batch = {"url": np.array(urls, dtype=object), "alt_text": np.array([None] * n, dtype=object),
             "source": np.array(["test"] * n, dtype=object), "row": np.arange(n, dtype=np.int64)}
    return Fetcher(cfg(**kw))(batch)


@pytest.fixture(scope="module")
def jpeg(photos):
    return photos[0].read_bytes()


@pytest.fixture(scope="module")
def server(jpeg):
    agents = []

    def record(h, n):
        agents.append(h.headers.get("User-Agent"))
        respond(jpeg)(h, n)

    with FaultServer() as s:
        s.agents = agents
        s.add("/plain.jpg", respond(jpeg))
        s.add("/ua.jpg", record)
        s.add("/noai.jpg", respond(jpeg, headers={"X-Robots-Tag": "noai"}))
        s.add("/noimageindex.jpg", respond(jpeg, headers={"X-Robots-Tag": "max-snippet:50, NoImageIndex"}))
        s.add("/ours.jpg", respond(jpeg, headers={"X-Robots-Tag": "supir-pipeline: noimageai"}))
        s.add("/theirs.jpg", respond(jpeg, headers={"X-Robots-Tag": "otherbot: noai, noindex"}))
        s.add("/nofollow.jpg", respond(jpeg, headers={"X-Robots-Tag": "nofollow"}))
        s.add("/busy.jpg", sequence(respond(b"", 429, headers={"Retry-After": "2"}), respond(jpeg)))
        s.add("/away.jpg", respond(b"", 503, "text/plain", headers={"Retry-After": "3600"}))
        s.add("/flaky.jpg", sequence(respond(b"", 500, "text/plain"), respond(jpeg)))
        yield s


def test_opted_out_directives_and_user_agent_tokens():
    d = ["noai", "noimageai", "noindex", "noimageindex"]
    assert opted_out(["noai"], "supir-pipeline", d) == "noai"
    assert opted_out(["NoIndex, nofollow"], "supir-pipeline", d) == "NoIndex, nofollow"
    assert opted_out(["supir-pipeline: noimageai"], "supir-pipeline", d) is not None
    assert opted_out(["* : noai"], "supir-pipeline", d) is not None
    assert opted_out(["googlebot: noindex"], "supir-pipeline", d) is None
    assert opted_out(["nofollow", "max-image-preview:large"], "supir-pipeline", d) is None
    assert opted_out(["max-snippet: 50, noimageindex"], "supir-pipeline", d) is not None  # a value, not a bot
    assert opted_out(["noai"], "supir-pipeline", []) is None


def test_x_robots_tag_opt_outs_end_as_opted_out(server):
    names = ["plain", "noai", "noimageindex", "ours", "theirs", "nofollow"]
    out = fetch([server.url(f"/{n}.jpg") for n in names])
    got = dict(zip(names, out["status"]))
    assert got == {"plain": "ok", "noai": "opted_out", "noimageindex": "opted_out", "ours": "opted_out",
                   "theirs": "ok", "nofollow": "ok"}, list(out["error"])
    i = names.index("noai")
    assert out["http_status"][i] == 200 and out["error"][i] == "X-Robots-Tag: noai" and out["bytes"][i] is None
    assert "opted_out" in IMAGE_STATUSES
    ignored = fetch([server.url("/noai.jpg")], opt_out_directives=[])  # configurable: [] ignores the header
    assert list(ignored["status"]) == ["ok"]


def test_user_agent_names_the_project_and_is_configurable(server):
    assert UA.startswith("supir-pipeline/")
    fetch([server.url("/ua.jpg")])
    fetch([server.url("/ua.jpg")], user_agent="my-lab-crawler/2.0 (+https://example.org/crawler)")
    assert server.agents[-2:] == [UA, "my-lab-crawler/2.0 (+https://example.org/crawler)"]
    with pytest.raises(ConfigError, match="crawl.opt_out_directives"):
        cfg(opt_out_directives=["NoAI"])


@pytest.fixture()
def waits(monkeypatch):
    """The crawl's sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(crawl_http, "time", types.SimpleNamespace(sleep=slept.append, monotonic=time.monotonic))
    return slept


def test_retry_after_is_honoured_on_429(server, waits):
    server.reset_counts()
    out = fetch([server.url("/busy.jpg")])
    assert list(out["status"]) == ["ok"] and server.counts["/busy.jpg"] == 2
    assert waits == [2.0]  # the server's 2 s, not the 0.05 s backoff


def test_a_retry_after_over_the_cap_gives_up_at_once(server, waits):
    server.reset_counts()
    out = fetch([server.url("/away.jpg")], max_retry_after_s=30)
    assert list(out["status"]) == ["http_error"] and out["http_status"][0] == 503
    assert "Retry-After 3600s > max_retry_after_s 30" in out["error"][0]
    assert server.counts["/away.jpg"] == 1 and waits == []


def test_backoff_without_retry_after_is_jittered(server, waits):
    server.reset_counts()
    out = fetch([server.url("/flaky.jpg")])
    assert list(out["status"]) == ["ok"] and len(waits) == 1 and 0.05 <= waits[0] < 0.075
    client = HttpClient(cfg(backoff_s=1.0))
    draws = [client.backoff(2) for _ in range(200)]
    assert all(4.0 <= d < 6.0 for d in draws) and np.std(draws) > 0.25  # 4 s x [1, 1.5): spread, not in step


def test_retry_after_header_forms():
    assert retry_after("7") == 7
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past: retry now

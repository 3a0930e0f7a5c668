"""HTTP(S) download for the crawl stage: address guard, manual redirects, retries, byte cap.

One :class:`HttpClient` per :class:`stages.crawl.Fetcher`; it wraps a thread-safe urllib3
``PoolManager`` (keep-alive connections shared by the fetcher's threads). urllib3 rather than
requests: it never routes through the ``*_PROXY`` environment variables (a proxy would hide the
address we connect to), and it lets us check the address of every socket we open.

Private, loopback, link-local, reserved and multicast addresses are refused twice: before
connecting (every address the host name resolves to) and after connecting (the peer address of
the socket, so a DNS answer that changes between the two lookups cannot slip through). Each
redirect hop goes through the same check, because redirects are followed here, not by urllib3.

Manners (as img2dataset's): a response whose X-Robots-Tag opts out of AI use or indexing for all
crawlers or for ours (``crawl.opt_out_directives``) is ``opted_out`` and its body is not read; the
User-Agent names the project; 429 and 503 wait for their Retry-After (up to
``crawl.max_retry_after_s``), other retries back off exponentially with jitter.
"""
from __future__ import annotations

import ipaddress
import random
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    HTTPError,
    LocationParseError,
    NameResolutionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import (
    TimeoutError as Urllib3Timeout,
)

from stages.crawl_config import CrawlConfig

REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 1 << 16


class FetchError(Exception):
    """A URL failed with one of catalog.schemas.IMAGE_STATUSES; ``retry`` if it may be transient,
    ``retry_after`` the seconds a 429/503 response asked for (None: not given)."""

    def __init__(self, status: str, error: str, http_status: int | None = None, retry: bool = False,
                 retry_after: float | None = None):
        super().__init__(f"{status}: {error}")
        self.status, self.error, self.http_status, self.retry = status, error, http_status, retry
        self.retry_after = retry_after


# X-Robots-Tag directives that carry a value after a colon (not a user-agent token before one)
VALUED_DIRECTIVES = {"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"}


def opted_out(values: list[str], token: str, directives: list[str]) -> str | None:
    """The X-Robots-Tag value that opts out of ``directives`` for us, or None.

    A value is ``directive, directive`` (for every crawler) or ``token: directive, ...`` (for the
    crawler whose User-Agent token is ``token``); directives compare case-insensitively."""
    wanted = set(directives)
    for value in values:
        ua, sep, rest = value.partition(":")
        addressed = sep and "," not in ua and ua.strip().lower() not in VALUED_DIRECTIVES
        if addressed and ua.strip().lower() not in (token.lower(), "*"):
            continue
        said = {d.strip().lower() for d in (rest if addressed else value).split(",")}
        if said & wanted:
            return value
    return None


def retry_after(header: str | None) -> float | None:
    """Seconds from a Retry-After header (delay seconds or an HTTP date; urllib3's parser)."""
    if not header:
        return None
    try:
        return urllib3.util.Retry().parse_retry_after(header)
    except urllib3.exceptions.InvalidHeader:
        return None


class ForbiddenAddress(Exception):
    """Raised from inside a connection; deliberately not an OSError so urllib3 does not wrap it."""


# IPv6 ranges whose last 32 bits are an IPv4 address a gateway or stack may route to: NAT64
# (RFC 6052), IPv4-compatible (RFC 4291 2.5.5.1, deprecated) and IPv4-translated (RFC 2765)
_LOW32_EMBEDS = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local-use, embeds anywhere


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64, compatible, translated)."""
    found = [a for a in (addr.ipv4_mapped, addr.sixtofour) if a is not None]
    if addr.teredo is not None:
        found += list(addr.teredo)
    if any(addr in net for net in _LOW32_EMBEDS):
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def is_public(ip: str) -> bool:
    """True for a globally routable unicast address. An IPv6 address that embeds IPv4 (``::127.0.0.1``,
    ``64:ff9b::7f00:1``, ``2002:7f00:1::``, ``::ffff:0:7f00:1``) is public only if every embedded
    IPv4 address is, since a translator on the path would deliver it there."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in _NAT64_LOCAL:
            return False
        inner = embedded_ipv4(addr)
        if inner:
            return all(a.is_global and not a.is_multicast for a in inner)
    return addr.is_global and not addr.is_multicast


def check_host(host: str, port: int) -> None:
    """Resolve ``host`` and raise FetchError(forbidden_address) if any address is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FetchError("connection_error", f"cannot resolve {host!r}: {e}") from None
    for info in infos:
        ip = info[4][0]
        if not is_public(ip):
            raise FetchError("forbidden_address", f"{host} resolves to non-public address {ip}")


_current = threading.local()  # the running request's watchdog, per fetch thread


class _Watchdog:
    """Bounds one request, headers and body, by a wall-clock deadline: when it fires it shuts the
    connection's socket down, which wakes any blocked read (a server dripping one byte at a time
    passes every per-read timeout; only this stops it)."""

    def __init__(self, seconds: float):
        self.conn = None
        self.expired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        _current.watchdog = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.disarm()
        _current.watchdog = None

    def disarm(self) -> None:
        """Stop watching; called before the connection goes back to the pool, so that a late
        timer can never shut down a connection another request has taken."""
        self._timer.cancel()
        with self._lock:
            self.conn = None

    def attach(self, conn) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.conn = conn
            expired = self.expired
        if expired:
            self._shutdown(conn)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            conn = self.conn
        if conn is not None:
            self._shutdown(conn)

    @staticmethod
    def _shutdown(conn) -> None:  # type: ignore[no-untyped-def]
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:  # the plain socket's shutdown, also under TLS: wakes the reader, then it fails
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class _DeadlineMixin:
    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        watchdog = getattr(_current, "watchdog", None)
        if watchdog is not None:
            watchdog.attach(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardMixin:
    def _new_conn(self):  # type: ignore[no-untyped-def]
        sock = super()._new_conn()  # type: ignore[misc]
        ip = sock.getpeername()[0]
        if not is_public(ip):
            sock.close()
            raise ForbiddenAddress(f"{self.host} connected to non-public address {ip}")  # type: ignore[attr-defined]
        return sock


class _DeadlineHTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnection(_GuardMixin, _DeadlineHTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardMixin, _DeadlineHTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


@dataclass
class Download:
    """A successful download: the body, the HTTP status and the final URL after redirects."""

    data: bytes
    http_status: int
    final_url: str
    content_type: str | None


class HttpClient:
    """GET with retries and exponential backoff; see the module docstring for the guards."""

    def __init__(self, cfg: CrawlConfig):
        self.cfg = cfg
        self.token = cfg.user_agent.split("/", 1)[0].split()[0]  # the product name X-Robots-Tag lines address
        self.jitter = random.Random()  # backoff jitter: deliberately not seeded, threads must not retry in step
        self.pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=max(cfg.threads, 1),
            block=False,
            timeout=urllib3.Timeout(connect=cfg.timeout_s, read=cfg.timeout_s),
            retries=False,
            headers={"User-Agent": cfg.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"},
        )
        if cfg.allow_private_addresses:
            self.pool.pool_classes_by_scheme = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}
        else:
            self.pool.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}

    def get(self, url: str) -> Download:
        """Download ``url`` or raise FetchError. Retries 5xx, 429, timeouts and broken connections."""
        cfg = self.cfg
        for attempt in range(cfg.retries + 1):
            try:
                return self._follow(url)
            except FetchError as e:
                if not e.retry or attempt == cfg.retries:
                    raise
                if e.retry_after is not None and e.retry_after > cfg.max_retry_after_s:
                    raise FetchError(e.status, f"{e.error}; Retry-After {e.retry_after:.0f}s > max_retry_after_s "
                                     f"{cfg.max_retry_after_s:g}", e.http_status) from None
                wait = max(self.backoff(attempt), e.retry_after or 0.0)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def backoff(self, attempt: int) -> float:
        """backoff_s * 2**attempt, jittered up by a factor in [1, 1.5) (never shorter than documented)."""
        return self.cfg.backoff_s * (2**attempt) * (1.0 + 0.5 * self.jitter.random())

    def _follow(self, url: str) -> Download:
        for _ in range(self.cfg.max_redirects + 1):
            location = self._once(url)
            if isinstance(location, Download):
                return location
            url = location
        raise FetchError("too_many_redirects", f"more than {self.cfg.max_redirects} redirects, last to {url}")

    def _once(self, url: str) -> Download | str:
        """One request: a Download, or the absolute URL a redirect points to."""
        cfg = self.cfg
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise FetchError("bad_url", str(e)) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("bad_url", f"not an http(s) URL: {url}")
        if not cfg.allow_private_addresses:
            check_host(parts.hostname, port)
        with _Watchdog(cfg.download_timeout_s) as watchdog:
            try:
                result = self._exchange(url, watchdog)
            except FetchError as e:
                if watchdog.expired and e.status != "too_large":
                    raise FetchError("timeout", f"response not complete within download_timeout_s "
                                                f"{cfg.download_timeout_s}s", e.http_status, retry=True) from None
                raise
            if watchdog.expired:  # the socket was shut: a body without Content-Length ended early
                raise FetchError("timeout", f"response not complete within download_timeout_s "
                                            f"{cfg.download_timeout_s}s", retry=True)
        return result

    def _exchange(self, url: str, watchdog: _Watchdog) -> Download | str:
        """Send one GET and read the answer (see _once); every failure is a FetchError."""
        cfg = self.cfg
        deadline = time.monotonic() + cfg.download_timeout_s
        response = None
        try:
            response = self.pool.request("GET", url, preload_content=False, redirect=False, retries=False)
            status = response.status
            if status in REDIRECTS:
                location = response.headers.get("Location")
                if not location:
                    raise FetchError("http_error", f"redirect {status} without Location", status)
                target = urljoin(url, location)
                if urlsplit(target).scheme not in ("http", "https"):
                    raise FetchError("bad_url", f"redirect to a non-http(s) URL: {target}", status)
                return target
            if status == 429 or status >= 500:
                wait = retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
                raise FetchError("http_error", f"HTTP {status}", status, retry=True, retry_after=wait)
            if status >= 300:
                raise FetchError("http_error", f"HTTP {status}", status)
            robots = opted_out(response.headers.getlist("X-Robots-Tag"), self.token, cfg.opt_out_directives)
            if robots is not None:
                raise FetchError("opted_out", f"X-Robots-Tag: {robots}", status)
            content_type = response.headers.get("Content-Type")
            if content_type and content_type.split(";")[0].strip().lower().startswith("text/"):
                raise FetchError("not_image", f"content-type {content_type}", status)
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise FetchError("too_large", f"Content-Length {length} > max_bytes {cfg.max_bytes}", status)
            chunks, size = [], 0
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > cfg.max_bytes:
                    raise FetchError("too_large", f"body over max_bytes {cfg.max_bytes}", status)
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"download over {cfg.download_timeout_s}s", status, retry=True)
                chunks.append(chunk)
            return Download(b"".join(chunks), status, url, content_type)
        except ForbiddenAddress as e:
            raise FetchError("forbidden_address", str(e)) from None
        except Urllib3Timeout as e:
            raise FetchError("timeout", _short(e), retry=True) from None
        except NameResolutionError as e:
            raise FetchError("connection_error", _short(e)) from None
        except SSLError as e:
            raise FetchError("connection_error", _short(e)) from None
        except (ProtocolError, HTTPError, OSError) as e:
            # includes a body shorter than its Content-Length ("IncompleteRead"): retried
            raise FetchError("connection_error", _short(e), retry=True) from None
        except (LocationParseError, ValueError, UnicodeError) as e:
            raise FetchError("bad_url", _short(e)) from None
        finally:
            watchdog.disarm()
            if response is not None:
                # a response we did not read to the end cannot be reused: drop its connection
                response.close()
                response.release_conn()


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]

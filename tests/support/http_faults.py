"""A loopback HTTP server with scripted faults, counting requests per path. For tests only.

    with FaultServer() as server:
        server.add("/ok.jpg", respond(jpeg_bytes))
        server.add("/flaky.jpg", sequence(respond(b"", status=500), respond(jpeg_bytes)))
        fetch(server.url("/ok.jpg"))
        assert server.counts["/flaky.jpg"] == 2

A route is a callable ``route(handler, n)``: ``handler`` is the BaseHTTPRequestHandler of the
request, ``n`` the 1-based number of requests so far on that path (this one included). The
factories below build the usual ones. Unknown paths answer 404. The server speaks HTTP/1.1
with keep-alive, binds 127.0.0.1 on a free port and runs in a daemon thread.
"""
from __future__ import annotations

import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit

Route = Callable[[BaseHTTPRequestHandler, int], None]


def respond(body: bytes, status: int = 200, content_type: str = "image/jpeg",
            headers: dict[str, str] | None = None, content_length: int | None = None) -> Route:
    """Answer ``status`` with ``body``; ``content_length`` overrides the header (a truncated body
    when larger than len(body): the connection is closed after the short body)."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        length = len(body) if content_length is None else content_length
        h.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if length != len(body):
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.write(body)

    return route


def stream(body: bytes, content_type: str = "image/jpeg", chunk: int = 1 << 16) -> Route:
    """Answer 200 with ``body`` and no Content-Length (the end is the closed connection)."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Connection", "close")
        h.close_connection = True
        h.end_headers()
        for i in range(0, len(body), chunk):
            h.wfile.write(body[i : i + chunk])

    return route


def redirect(location: str, status: int = 302) -> Route:
    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def slow(seconds: float, then: Route) -> Route:
    """Wait ``seconds`` before answering with ``then``."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        time.sleep(seconds)
        then(h, n)

    return route


def drip(body: bytes, every_s: float, content_type: str = "image/jpeg") -> Route:
    """Write the whole response, status line and headers included, one byte every ``every_s``
    (a slow-drip server: each read succeeds long before any per-read timeout)."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        h.close_connection = True
        for i, byte in enumerate(head + body):
            try:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
            except OSError:  # the client gave up
                return
            time.sleep(every_s)

    return route


def sequence(*routes: Route) -> Route:
    """The n-th request gets routes[n-1]; later ones get the last route."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        routes[min(n, len(routes)) - 1](h, n)

    return route


def not_found() -> Route:
    return respond(b"not found", status=404, content_type="text/plain")


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit grayscale PNG of zeros, width x height, a few tens of KB on the wire.

    Built chunk by chunk with zlib so the pixels are never allocated (the decompression bomb).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])  # 1-bit gray
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed zero pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    routes: dict[str, Route]
    counts: Counter
    lock: threading.Lock

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # clients hang up on purpose
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        with self.server.lock:
            self.server.counts[path] += 1
            n = self.server.counts[path]
        route = self.server.routes.get(path, not_found())
        try:
            route(self, n)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts, byte caps)
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # quiet
        pass


class FaultServer:
    """Loopback HTTP server with scripted routes and request counts per path (a context manager)."""

    def __init__(self, routes: dict[str, Route] | None = None, host: str = "127.0.0.1"):
        self._server = _Server((host, 0), _Handler)
        self._server.routes = dict(routes or {})
        self._server.counts = Counter()
        self._server.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def counts(self) -> Counter:
        """Requests received per path."""
        return self._server.counts

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def add(self, path: str, route: Route) -> str:
        """Serve ``route`` at ``path``; returns its URL."""
        self._server.routes[path] = route
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def reset_counts(self) -> None:
        with self._server.lock:
            self._server.counts.clear()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""Servers that are *not* Ollama, on loopback, for tests and benchmarks.

Why: a router must know what a server is. The Ollama stand-in (``server``) speaks Ollama's
protocol, faults included; what users also meet is a URL where something else answers (a
plain web server, a health endpoint of another service, JSON of another shape) or where a
process accepts connections and never answers. These are those, each started on a free
loopback port and stopped by its context manager:

- :func:`plain_http_server` -- Python's own ``http.server`` over an empty folder (what
  ``python -m http.server`` gives: 404 HTML for ``/api/version``, 501 HTML for a ``POST``).
- :func:`json_server` -- answers every request ``status`` with one JSON body (default
  ``{"status": "ok"}``: JSON, but not Ollama's shape).
- :func:`silent_listener` -- accepts TCP connections, reads nothing, writes nothing.
"""

from __future__ import annotations

import http.server
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

__all__ = ["json_server", "plain_http_server", "silent_listener"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _serve(handler: Any) -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, name="foreign-http", daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def plain_http_server() -> Iterator[str]:
    """``python -m http.server`` over an empty folder; yields its URL."""
    with tempfile.TemporaryDirectory() as root, _serve(partial(_Quiet, directory=root)) as url:
        yield url


@contextmanager
def json_server(body: Any = None, status: int = 200) -> Iterator[str]:
    """A server answering every GET and POST with ``status`` and ``body`` as JSON."""
    data = json.dumps({"status": "ok"} if body is None else body).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with _serve(Handler) as url:
        yield url


@contextmanager
def silent_listener() -> Iterator[str]:
    """A TCP listener that accepts and never answers (a hung server); yields its URL."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:  # a timeout, or the listener closed
                continue
            held.append(conn)

    t = threading.Thread(target=accept, name="silent-listener", daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(1.0)
        for c in held:
            c.close()
        srv.close()

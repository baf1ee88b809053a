"""HTTP plumbing of the stand-in: the threading server, the request handler, Go-style JSON.

Why its own module: the stand-in's behaviour (endpoints, faults, models) should read without
the socket-level details, and those details (no DNS lookup on bind, tracked connections so
``stop()`` can cut them, no ``Server:`` header, Go's JSON escapes and decoder wording) are
what make it a faithful *server* rather than a mock.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

log = logging.getLogger("langchain_contextharbor.testing.server")

_POLL = 0.05  # seconds between checks for a stopped server / a vanished client


class _RequestError(Exception):
    """An Ollama error response: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Aborted(Exception):
    """The connection was dropped on purpose (stop, cut fault, hang cap); write nothing more."""


def _dumps(obj: Any) -> bytes:
    """``json.Marshal``-alike: compact, UTF-8, with Go's HTML-safe escapes."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return text.encode("utf-8")


def _go_json_error(raw: bytes, exc: json.JSONDecodeError) -> str:
    """Approximate the Go decoder's wording for a body that is not valid JSON."""
    text = raw.decode("utf-8", errors="replace")
    pos = exc.pos
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos >= len(text):
        return "unexpected EOF"
    char = text[pos]
    if exc.msg.startswith("Expecting value"):
        return f"invalid character {char!r} looking for beginning of value"
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character {char!r} looking for beginning of object key string"
    if exc.msg.startswith("Expecting ':'"):
        return f"invalid character {char!r} after object key"
    if exc.msg.startswith("Expecting ','"):
        return f"invalid character {char!r} after object key:value pair"
    if exc.msg.startswith("Extra data"):
        return f"invalid character {char!r} after top-level value"
    return f"invalid character {char!r} looking for beginning of value"


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


class _Host(Protocol):
    """What the HTTP plumbing needs of the stand-in it serves (``OllamaStandIn`` is one):
    its name for log lines, connection tracking for ``stop()``, and the dispatch of a
    parsed request. Declared here so this module imports nothing above it."""

    @property
    def name(self) -> str: ...

    def _track(self, sock: socket.socket, *, add: bool) -> None: ...

    def _dispatch(self, handler: _Handler) -> None: ...


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], standin: _Host) -> None:
        self.standin = standin
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can stall for
        # seconds on a machine without network; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self.standin._track(request, add=True)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.standin._track(request, add=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("stand-in %s: handler error", self.standin.name, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HTTPServer

    # quiet, and no "Server:" header (gin sends none)
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("stand-in %s: " + format, self.server.standin.name, *args)

    def send_response(self, code: int, message: str | None = None) -> None:
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self) -> None:
        self.server.standin._dispatch(self)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

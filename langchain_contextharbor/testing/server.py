"""A real HTTP server on loopback that speaks Ollama's API: the stand-in behind every test.

Why a real server and not an httpx mock: the router under test talks to Ollama through
ollama-python and ChatOllama, and its failover logic keys on *transport* behaviour (connection
refused, a stream cut before its terminating chunk, a read that never returns). Only real
sockets reproduce those faithfully, and they let several "Ollama servers" run side by side in
one process, on fixed or ephemeral ports, stoppable and restartable on the same port.

Built on the standard library only (``http.server.ThreadingHTTPServer``, HTTP/1.1 with
hand-written chunked transfer encoding), so it adds no dependency to the project.

Usage::

    with OllamaStandIn(name="gpu", models=["llama3.2:1b"]) as gpu:
        ChatOllama(model="llama3.2:1b", base_url=gpu.url).invoke("hi")
        gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=2)
        gpu.stop()   # connection refused from now on ...
        gpu.start()  # ... and back, on the same port
        assert gpu.requests[-1].path == "/api/chat"
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import select
import socket
import socketserver
import string
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import EllipsisType
from typing import Any
from urllib.parse import urlsplit

from langchain_contextharbor.testing.engines import (
    ChatTurn,
    DoneEvent,
    EmbeddingNotSupported,
    Engine,
    EngineEvent,
    ScriptedEngine,
    TextToken,
    ThinkingToken,
    ToolCallEvent,
    count_words,
    normalize,
    split_tokens,
)
from langchain_contextharbor.testing.faults import (
    BUSY_MESSAGE,
    MALFORMED_LINE,
    MID_STREAM_ERROR_MESSAGE,
    MODEL_RUNNER_CRASH_MESSAGE,
    Fault,
    FaultRule,
    FaultTable,
    normalize_paths,
    oom_message,
)
from langchain_contextharbor.testing.models import (
    DEFAULT_NUM_CTX,
    LoadedModel,
    StandInModel,
    normalize_model_name,
    qualified_model_name,
    rfc3339_nano,
)

__all__ = ["OllamaStandIn", "RequestRecord", "StandInConfig"]

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_FOREVER_NS = 2**63 - 1  # Go's MaxInt64 duration: what a negative keep_alive becomes.
_GIB = 1024**3
_POLL = 0.05  # seconds between checks for a stopped server / a vanished client

_ROUTES: dict[str, frozenset[str]] = {
    "/": frozenset({"GET", "HEAD"}),
    "/api/version": frozenset({"GET", "HEAD"}),
    "/api/tags": frozenset({"GET", "HEAD"}),
    "/api/ps": frozenset({"GET"}),
    "/api/show": frozenset({"POST"}),
    "/api/chat": frozenset({"POST"}),
    "/api/generate": frozenset({"POST"}),
    "/api/embed": frozenset({"POST"}),
    "/api/embeddings": frozenset({"POST"}),
    "/api/delete": frozenset({"DELETE"}),
}

_INT_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
        "mirostat",
    }
)
_FLOAT_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "tfs_z",
        "mirostat_tau",
        "mirostat_eta",
    }
)
_THINK_LEVELS = ("high", "medium", "low")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": _NS,
    "m": 60 * _NS,
    "h": 3600 * _NS,
}


class _RequestError(Exception):
    """An Ollama error response: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Aborted(Exception):
    """The connection was dropped on purpose (stop, cut fault, hang cap); write nothing more."""


# ---------------------------------------------------------------------------- config / log
@dataclass
class StandInConfig:
    """Per-instance settings of an ``OllamaStandIn`` (all have usable defaults).

    ``gpu_fraction`` is the share of a loaded model's bytes reported as ``size_vram`` in
    ``/api/ps`` (1.0 = a GPU server, 0.0 = CPU-only). ``load_delay`` is paid by a chat whose
    model is not loaded (or needs a reload for another ``num_ctx``/``num_gpu``); ``token_delay``
    separates streamed chunks. ``num_parallel`` requests generate at once; up to ``max_queue``
    more wait for a slot and any beyond get Ollama's 503. ``keep_alive`` (seconds, negative =
    forever) is the default residency after a request. ``hang_cap`` bounds every injected hang
    so nothing can block forever. ``available_memory`` is the "available" figure of the OOM
    fault's text (0 = a third of what the model needs). ``max_log`` bounds the request log
    (oldest entries are dropped), so a long-running CLI instance does not grow without end.
    """

    name: str = "ollama"
    host: str = "127.0.0.1"
    port: int = 0
    version: str = "0.14.3"
    models: list[StandInModel | str] = field(default_factory=lambda: ["llama3.2:1b"])
    loaded: list[str] = field(default_factory=list)
    gpu_fraction: float = 1.0
    load_delay: float = 0.0
    token_delay: float = 0.0
    num_parallel: int = 1
    max_queue: int = 512
    keep_alive: float = 300.0
    num_ctx: int = DEFAULT_NUM_CTX
    hang_cap: float = 60.0
    available_memory: int = 0
    max_log: int = 10_000
    engine: Engine | None = None


@dataclass
class RequestRecord:
    """One request as the stand-in saw it (``srv.requests``).

    ``body`` is the parsed JSON body (``None`` when absent or not JSON). ``status`` is the
    HTTP status sent, or ``None`` while the request is still running or when no status line
    was ever sent (a hang or a cut before headers). ``fault`` is the injected fault that this
    request consumed, if any. ``timestamp`` is ``time.time()`` at arrival.
    """

    method: str
    path: str
    body: Any
    timestamp: float
    instance: str
    status: int | None = None
    fault: Fault | None = None

    @property
    def model(self) -> str | None:
        """The ``model`` field of the body, when there is one."""
        if isinstance(self.body, dict):
            value = self.body.get("model") or self.body.get("name")
            return value if isinstance(value, str) else None
        return None


# ---------------------------------------------------------------------------- helpers
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


def parse_keep_alive(value: Any) -> int | None:
    """Parse a ``keep_alive`` field into nanoseconds (``None`` = not given).

    Numbers are seconds; strings are Go durations (``"5m"``, ``"1h30m"``, ``"-1m"``, ``"0"``).
    Negative means forever. Raises ``_RequestError(400)`` with Go's ``time`` error texts.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise _RequestError(400, "json: cannot unmarshal bool into Go value of type float64")
    if isinstance(value, (int, float)):
        ns = int(value * _NS)
        return _FOREVER_NS if ns < 0 else ns
    if not isinstance(value, str):
        raise _RequestError(400, f"json: cannot unmarshal {_go_type(value)} into Go value")
    text = value
    if text in ("0", "+0", "-0"):
        return 0
    m = re.fullmatch(r"([+-]?)((?:\d*\.?\d+(?:ns|us|µs|μs|ms|s|m|h))+)", text)
    if not m:
        if re.fullmatch(r"[+-]?\d*\.?\d+", text):
            raise _RequestError(400, f'time: missing unit in duration "{text}"')
        raise _RequestError(400, f'time: invalid duration "{text}"')
    total = 0.0
    for num, unit in re.findall(r"(\d*\.?\d+)(ns|us|µs|μs|ms|s|m|h)", m.group(2)):
        total += float(num) * _DURATION_UNITS[unit]
    ns = int(-total if m.group(1) == "-" else total)
    return _FOREVER_NS if ns < 0 else ns


def _validate_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _RequestError(
            400,
            f"json: cannot unmarshal {_go_type(options)} into Go struct field "
            "ChatRequest.options of type map[string]interface {}",
        )
    # Real Ollama's options parser skips nil values (OllamaEmbeddings sends every option it
    # knows, unset ones as null), so a null means "not given", on every endpoint.
    given: dict[str, Any] = {key: val for key, val in options.items() if val is not None}
    for key, val in given.items():
        if key in _INT_OPTIONS and (isinstance(val, bool) or not isinstance(val, (int, float))):
            raise _RequestError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and (isinstance(val, bool) or not isinstance(val, (int, float))):
            raise _RequestError(500, f'option "{key}" must be of type float32')
        if key == "stop" and not (isinstance(val, list) and all(isinstance(s, str) for s in val)):
            raise _RequestError(500, f'option "{key}" must be of type array')
    return given


def _tool_call_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(8))


class _StopFilter:
    """Streams text while holding back anything that could be the start of a stop sequence."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """Add ``text``; return what can be emitted now (``self.hit`` once a stop matched)."""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.hit = self.pending[:cut], "", True
            return out
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        """Whatever is still held back once generation ended without a match."""
        out, self.pending = self.pending, ""
        return out


# ---------------------------------------------------------------------------- HTTP plumbing
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], standin: OllamaStandIn) -> None:
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


class _Exchange:
    """One request/response on a connection: body parsing, fault hooks and framing."""

    def __init__(self, srv: OllamaStandIn, handler: _Handler, record: RequestRecord) -> None:
        self.srv = srv
        self.h = handler
        self.record = record
        self.rule: FaultRule | None = None
        self.headers_sent = False
        self.chunks = 0
        self.finished = False
        self.stop_event = srv._stop_event
        self.release = srv._release

    # -- fault bookkeeping --------------------------------------------------------
    def take_rule(self, *faults: Fault) -> FaultRule | None:
        """Hand out the pending rule once, if it is one of ``faults`` (any when empty)."""
        rule = self.rule
        if rule is None or (faults and rule.fault not in faults):
            return None
        self.rule = None
        return rule

    def client_gone(self) -> bool:
        """Whether the client closed its end (Ollama cancels such a request, freeing its slot)."""
        sock = self.h.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait for ``event`` up to ``seconds``; abort when the client disconnects meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return event.is_set()
            if event.wait(min(_POLL, remaining)):
                return True
            if self.client_gone():
                raise _Aborted

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless the server stops or the client leaves first (then abort)."""
        if seconds <= 0:
            return
        if seconds < _POLL:
            if self.stop_event.wait(seconds):
                raise _Aborted
            return
        if self._wait(self.stop_event, seconds):
            raise _Aborted

    def hang(self, rule: FaultRule) -> None:
        """Block until ``clear_faults()`` (resume), ``stop()``, client exit or the cap (abort)."""
        limit = rule.delay if rule.delay is not None else self.srv.config.hang_cap
        released = self._wait(self.release, limit)
        if self.stop_event.is_set():
            raise _Aborted
        if not released and rule.delay is None:
            raise _Aborted

    def abort(self) -> None:
        """Drop the connection at once, without finishing the response."""
        self.h.close_connection = True
        with contextlib.suppress(OSError):
            self.h.connection.shutdown(socket.SHUT_RDWR)
        raise _Aborted

    # -- plain responses -----------------------------------------------------------
    def _headers(self, status: int, content_type: str, length: int | None) -> None:
        self.record.status = status
        self.h.send_response(status)
        self.h.send_header("Content-Type", content_type)
        if length is None:
            self.h.send_header("Transfer-Encoding", "chunked")
        else:
            self.h.send_header("Content-Length", str(length))
        self.h.end_headers()
        self.h.wfile.flush()
        self.headers_sent = True

    def send(self, status: int, content_type: str, body: bytes) -> None:
        """Send a complete response, letting a pending stream-type fault act on it."""
        rule = self.take_rule()
        head = self.h.command == "HEAD"
        if rule is not None:
            self.record.fault = rule.fault
            f = rule.fault
            if f in (Fault.HANG_BEFORE_FIRST_CHUNK, Fault.HANG_MID_STREAM, Fault.ACCEPT_HANG):
                self.hang(rule)
            elif f is Fault.SLOW_FIRST_TOKEN:
                self.sleep(rule.delay if rule.delay is not None else 1.0)
            elif f is Fault.HANG_AFTER_HEADERS:
                self._headers(status, content_type, len(body))
                self.hang(rule)
                if not head:
                    self.h.wfile.write(body)
                return
            elif f is Fault.CUT_MID_STREAM:
                self._headers(status, content_type, len(body))
                if not head:
                    self.h.wfile.write(body[: len(body) // 2])
                self.abort()
            elif f is Fault.MALFORMED_LINE:
                body = (rule.message or MALFORMED_LINE).encode() + b"\n"
            elif f is Fault.ERROR_MID_STREAM:
                status, content_type = 500, "application/json; charset=utf-8"
                body = _dumps({"error": rule.message or MID_STREAM_ERROR_MESSAGE})
        self._headers(status, content_type, len(body))
        if not head:
            self.h.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        """``application/json; charset=utf-8`` response."""
        self.send(status, "application/json; charset=utf-8", _dumps(obj))

    def send_error(self, status: int, message: str) -> None:
        """Ollama's ``{"error": message}`` response."""
        self.send_json(status, {"error": message})

    # -- NDJSON streaming ----------------------------------------------------------
    def _write_chunk(self, data: bytes) -> None:
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _ensure_stream_headers(self) -> None:
        if not self.headers_sent:
            self._headers(200, "application/x-ndjson", None)

    def _stream_fault(self, final: bool) -> bool:
        """Apply a pending stream fault at this chunk boundary; False = stream is over."""
        rule = self.rule
        if rule is None:
            return True
        f = rule.fault
        at_start = self.chunks == 0
        due = final or self.chunks >= rule.after_chunks
        if f in (Fault.HANG_BEFORE_FIRST_CHUNK, Fault.HANG_AFTER_HEADERS):
            due = at_start
        if not due:
            return True
        self.rule = None
        self.record.fault = f
        if f is Fault.SLOW_FIRST_TOKEN:
            self.sleep(rule.delay if rule.delay is not None else 1.0)
            return True
        if f is Fault.HANG_BEFORE_FIRST_CHUNK:
            self.hang(rule)
            return True
        if f is Fault.HANG_AFTER_HEADERS:
            self._ensure_stream_headers()
            self.hang(rule)
            return True
        if f is Fault.HANG_MID_STREAM:
            if not at_start:
                self._ensure_stream_headers()
            self.hang(rule)
            return True
        self.sleep(rule.delay or 0.0)
        self._ensure_stream_headers()
        if f is Fault.CUT_MID_STREAM:
            self.abort()
        if f is Fault.ERROR_MID_STREAM:
            line = _dumps({"error": rule.message or MID_STREAM_ERROR_MESSAGE}) + b"\n"
        else:  # MALFORMED_LINE
            line = (rule.message or MALFORMED_LINE).encode() + b"\n"
        self._write_chunk(line)
        self.end_stream()
        return False

    def emit(self, obj: dict[str, Any], *, final: bool = False) -> bool:
        """Write one NDJSON line; False when a fault ended the stream instead."""
        if self.finished:
            return False
        if not self._stream_fault(final):
            return False
        self._ensure_stream_headers()
        self._write_chunk(_dumps(obj) + b"\n")
        self.chunks += 1
        return True

    def end_stream(self) -> None:
        """Terminating zero-length chunk: a clean end of the response body."""
        if not self.finished:
            self._ensure_stream_headers()
            self.h.wfile.write(b"0\r\n\r\n")
            self.finished = True


# ---------------------------------------------------------------------------- the stand-in
class OllamaStandIn:
    """An Ollama-compatible HTTP server on loopback, with fault injection and a request log.

    ``OllamaStandIn(config)`` or ``OllamaStandIn(name="gpu", models=["llama3.2:1b"], ...)``
    (keyword arguments override fields of ``StandInConfig``). ``start()``/``stop()`` (or use it
    as a context manager); ``stop()`` makes the port refuse connections and ``start()`` reopens
    the *same* port. Models given as strings become ``StandInModel(name)``.
    """

    def __init__(self, config: StandInConfig | None = None, /, **overrides: Any) -> None:
        cfg = replace(config) if config is not None else StandInConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        self.config = cfg
        self.engine: Engine = cfg.engine if cfg.engine is not None else ScriptedEngine()
        self._lock = threading.RLock()
        self._models: dict[str, StandInModel] = {}
        for m in cfg.models:
            spec = m if isinstance(m, StandInModel) else StandInModel(m)
            self._models[spec.name] = spec
        self._loaded: dict[str, LoadedModel] = {}
        self._ready: dict[str, threading.Event] = {}
        for name in cfg.loaded:
            self.set_loaded(name)
        self._faults = FaultTable()
        self._log: deque[RequestRecord] = deque(maxlen=max(1, cfg.max_log))
        self._log_lock = threading.Lock()
        self._slots = threading.Condition()
        self._active = 0
        self._waiting = 0
        self._stop_event = threading.Event()
        self._stop_event.set()
        self._release = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        self._port = cfg.port
        self._refusing = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def name(self) -> str:
        """Instance name (what the scripted engine puts in its answers)."""
        return self.config.name

    @property
    def host(self) -> str:
        """Bind address."""
        return self.config.host

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one after the first ``start()`` with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port``: the ``base_url`` for ChatOllama / ``host`` for ollama.Client."""
        return f"http://{self.host}:{self._port}"

    base_url = url

    @property
    def running(self) -> bool:
        """Whether the listener is open."""
        return self._httpd is not None

    def start(self) -> OllamaStandIn:
        """Open the listener (same port as before, if it ran already). Idempotent."""
        with self._lock:
            self._refusing = False
            if self._httpd is not None:
                return self
            self._stop_event = threading.Event()
            self._release = threading.Event()
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    httpd = _HTTPServer((self.host, self._port), self)
                    break
                except OSError:
                    if self._port == 0 or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._port = int(httpd.server_address[1])
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"ollama-standin-{self.name}:{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every open connection; hung handlers are released.

        Afterwards the port refuses connections (``httpx.ConnectError``) until ``start()``.
        Never blocks longer than ``timeout`` on handler threads.
        """
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
            self._stop_event.set()
            self._release.set()
        if httpd is None:
            return
        with self._slots:
            self._slots.notify_all()
        httpd.shutdown()
        httpd.server_close()
        with self._conns_lock:
            conns = dict(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for worker in [*conns.values(), thread]:
            if worker is not None and worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))

    def restart(self) -> OllamaStandIn:
        """``stop()`` then ``start()`` on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> OllamaStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<OllamaStandIn {self.name!r} {self.url} {state}>"

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns[sock] = threading.current_thread()
            else:
                self._conns.pop(sock, None)

    # ------------------------------------------------------------------ faults & log
    def inject(
        self,
        fault: Fault | str,
        *,
        count: int | None = None,
        after_chunks: int = 0,
        delay: float | None = None,
        paths: Sequence[str] | str | EllipsisType | None = ...,
        status: int | None = None,
        message: str | None = None,
    ) -> FaultRule:
        """Make the next ``count`` matching requests (all, if ``None``) fail with ``fault``.

        ``after_chunks``: K for mid-stream faults. ``delay``: stall of ``SLOW_FIRST_TOKEN``
        (default 1 s), wait before an error response or a mid-stream fault, or a finite hang
        length (hangs then resume). ``paths``: which paths match (default ``("/api/chat",)``,
        everything for ``REFUSE``/``ACCEPT_HANG``; ``None`` = every path). ``status`` /
        ``message`` override the HTTP status (``HTTP_ERROR``) and the error text.
        ``REFUSE`` closes the listener until ``clear_faults()`` and ignores the other options.
        """
        f = Fault(fault)
        if f is Fault.REFUSE:
            if count is not None:
                raise ValueError("Fault.REFUSE cannot be counted: it closes the port")
            rule = FaultRule(f, None, paths=None)
            self.stop()
            self._refusing = True
            return rule
        rule = FaultRule(
            fault=f,
            remaining=count,
            after_chunks=max(0, after_chunks),
            delay=delay,
            paths=normalize_paths(
                f,
                None if isinstance(paths, EllipsisType) else paths,
                given=not isinstance(paths, EllipsisType),
            ),
            status=status,
            message=message,
        )
        return self._faults.add(rule)

    def clear_faults(self) -> None:
        """Drop every rule, release hung handlers (they resume) and undo ``REFUSE``."""
        self._faults.clear()
        with self._lock:
            old, self._release = self._release, threading.Event()
        old.set()
        if self._refusing:
            self.start()

    @property
    def faults(self) -> list[FaultRule]:
        """Rules that can still match."""
        return self._faults.active()

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the request log (oldest first)."""
        with self._log_lock:
            return list(self._log)

    def requests_to(self, path: str) -> list[RequestRecord]:
        """The logged requests for one path, e.g. ``srv.requests_to("/api/chat")``."""
        return [r for r in self.requests if r.path == path]

    def clear_log(self) -> None:
        """Forget the request log."""
        with self._log_lock:
            self._log.clear()

    @property
    def in_flight(self) -> int:
        """Requests generating right now (holding a ``num_parallel`` slot)."""
        with self._slots:
            return self._active

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        with self._slots:
            return self._waiting

    # ------------------------------------------------------------------ models
    @property
    def models(self) -> list[StandInModel]:
        """Models this instance has (``/api/tags``)."""
        with self._lock:
            return list(self._models.values())

    @property
    def loaded(self) -> list[LoadedModel]:
        """Models resident now (``/api/ps``), expired ones dropped."""
        with self._lock:
            self._purge_expired()
            return list(self._loaded.values())

    def get_model(self, name: str) -> StandInModel | None:
        """The model ``name`` resolves to (``llama3.2`` finds ``llama3.2:latest``)."""
        with self._lock:
            return self._models.get(normalize_model_name(name))

    def add_model(self, model: StandInModel | str, *, loaded: bool = False) -> StandInModel:
        """Make ``model`` available (replacing one of the same name); optionally load it."""
        spec = model if isinstance(model, StandInModel) else StandInModel(model)
        with self._lock:
            self._models[spec.name] = spec
        if loaded:
            self.set_loaded(spec.name)
        return spec

    def remove_model(self, name: str) -> None:
        """Delete a model (and unload it): requests for it now get 404."""
        key = normalize_model_name(name)
        with self._lock:
            self._models.pop(key, None)
            self._loaded.pop(key, None)

    def set_loaded(
        self,
        name: str,
        *,
        size: int | None = None,
        size_vram: int | None = None,
        context_length: int | None = None,
        expires_in: float | None = None,
        num_gpu: int = -1,
    ) -> LoadedModel:
        """Mark ``name`` as resident, as ``/api/ps`` should report it.

        Unset numbers are derived: ``context_length`` = the instance's ``num_ctx``, ``size`` =
        weights + KV cache + graph, ``size_vram`` = ``size * gpu_fraction`` (0 with
        ``num_gpu=0``), ``expires_in`` = the instance's ``keep_alive`` (negative = forever).
        """
        key = normalize_model_name(name)
        with self._lock:
            spec = self._models.get(key)
            if spec is None:
                raise KeyError(f"model {name!r} is not one of this stand-in's models")
            ctx = context_length or self.config.num_ctx
            total = size if size is not None else spec.loaded_size(ctx)
            if size_vram is None:
                size_vram = 0 if num_gpu == 0 else int(total * self.config.gpu_fraction)
            ka = self._keep_alive_ns(None if expires_in is None else expires_in)
            lm = LoadedModel(
                model=spec,
                size=total,
                size_vram=size_vram,
                context_length=ctx,
                expires_at_ns=self._expiry(ka),
                num_gpu=num_gpu,
                keep_alive_ns=ka,
            )
            self._loaded[key] = lm
            return lm

    def unload(self, name: str | None = None) -> None:
        """Evict ``name`` (every model when ``None``) from ``/api/ps``."""
        with self._lock:
            if name is None:
                self._loaded.clear()
            else:
                self._loaded.pop(normalize_model_name(name), None)

    def _keep_alive_ns(self, seconds: float | None) -> int:
        value = self.config.keep_alive if seconds is None else seconds
        ns = int(value * _NS)
        return _FOREVER_NS if ns < 0 else ns

    @staticmethod
    def _expiry(keep_alive_ns: int) -> int:
        return time.time_ns() + keep_alive_ns

    def _purge_expired(self) -> None:
        now = time.time_ns()
        for key, lm in list(self._loaded.items()):
            if lm.in_flight == 0 and lm.expires_at_ns <= now:
                del self._loaded[key]

    # ------------------------------------------------------------------ request plumbing
    def _record(self, method: str, path: str, body: Any) -> RequestRecord:
        rec = RequestRecord(method, path, body, time.time(), self.name)
        with self._log_lock:
            self._log.append(rec)
        return rec

    def _dispatch(self, handler: _Handler) -> None:
        method = handler.command
        path = urlsplit(handler.path).path or "/"
        raw = b""
        try:
            raw = self._read_body(handler)
        except (OSError, ValueError):
            handler.close_connection = True
            return
        body: Any = None
        parse_error: str | None = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as exc:
                parse_error = _go_json_error(raw, exc)
            except UnicodeDecodeError:
                parse_error = "invalid character looking for beginning of value"
        record = self._record(method, path, body)
        ex = _Exchange(self, handler, record)
        ex.rule = self._faults.take(path)
        try:
            self._route(ex, method, path, raw, body, parse_error)
        except _Aborted:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            handler.close_connection = True
        except OSError:
            handler.close_connection = True

    @staticmethod
    def _read_body(handler: _Handler) -> bytes:
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = handler.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(handler.rfile.read(size))
                handler.rfile.readline(65537)
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length > 0 else b""

    def _route(
        self,
        ex: _Exchange,
        method: str,
        path: str,
        raw: bytes,
        body: Any,
        parse_error: str | None,
    ) -> None:
        rule = ex.rule
        if rule is not None and rule.fault is Fault.ACCEPT_HANG:
            ex.rule = None
            ex.record.fault = rule.fault
            ex.hang(rule)  # released by clear_faults(): answer normally, like the other hangs
        if rule is not None and rule.fault.is_error_response:
            ex.rule = None
            ex.record.fault = rule.fault
            ex.sleep(rule.delay or 0.0)
            status, message = self._fault_error(rule, path, body)
            ex.send_error(status, message)
            return

        allowed = _ROUTES.get(path)
        if allowed is None:
            ex.send(404, "text/plain", b"404 page not found")
            return
        if method not in allowed:
            ex.send(405, "text/plain", b"405 method not allowed")
            return
        try:
            if method in ("POST", "DELETE"):
                if parse_error is not None:
                    raise _RequestError(400, parse_error)
                if not raw.strip():
                    raise _RequestError(400, "missing request body")
                if not isinstance(body, dict):
                    raise _RequestError(
                        400,
                        f"json: cannot unmarshal {_go_type(body)} into Go value of type "
                        f"api.{_REQUEST_TYPES.get(path, 'Request')}",
                    )
            endpoint = getattr(self, "_h_" + (path.strip("/").replace("/", "_") or "root"))
            endpoint(ex, body if isinstance(body, dict) else {})
        except _RequestError as err:
            if ex.headers_sent:
                if not ex.finished:
                    ex._write_chunk(_dumps({"error": err.message}) + b"\n")
                    ex.end_stream()
                return
            ex.send_error(err.status, err.message)

    def _fault_error(self, rule: FaultRule, path: str, body: Any) -> tuple[int, str]:
        model = ""
        if isinstance(body, dict):
            model = str(body.get("model") or body.get("name") or "")
        f = rule.fault
        if f is Fault.BUSY:
            return rule.status or 503, rule.message or BUSY_MESSAGE
        if f is Fault.MODEL_NOT_FOUND:
            if rule.message:
                return rule.status or 404, rule.message
            if path in ("/api/embed", "/api/embeddings"):
                return rule.status or 404, f'model "{model}" not found, try pulling it first'
            return rule.status or 404, f"model '{model}' not found"
        if f is Fault.OOM:
            spec = self.get_model(model) if model else None
            need = spec.loaded_size(self.config.num_ctx) if spec else 8 * _GIB
            have = self.config.available_memory or need // 3
            return rule.status or 500, rule.message or oom_message(need, have)
        return rule.status or 500, rule.message or MODEL_RUNNER_CRASH_MESSAGE

    # ------------------------------------------------------------------ simple endpoints
    def _h_root(self, ex: _Exchange, body: dict[str, Any]) -> None:
        ex.send(200, "text/plain; charset=utf-8", b"Ollama is running")

    def _h_api_version(self, ex: _Exchange, body: dict[str, Any]) -> None:
        ex.send_json(200, {"version": self.config.version})

    def _h_api_tags(self, ex: _Exchange, body: dict[str, Any]) -> None:
        models = sorted(self.models, key=lambda m: m.modified_at_ns, reverse=True)
        ex.send_json(200, {"models": [m.tags_entry() for m in models]})

    def _h_api_ps(self, ex: _Exchange, body: dict[str, Any]) -> None:
        loaded = sorted(self.loaded, key=lambda lm: lm.expires_at_ns, reverse=True)
        ex.send_json(200, {"models": [lm.ps_entry() for lm in loaded]})

    def _h_api_show(self, ex: _Exchange, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _RequestError(400, "model is required")
        spec = self.get_model(name)
        if spec is None:
            raise _RequestError(404, f"model '{name}' not found")
        ex.send_json(200, spec.show_response())

    def _h_api_delete(self, ex: _Exchange, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _RequestError(400, "model is required")
        if self.get_model(name) is None:
            raise _RequestError(404, f"model '{name}' not found")
        self.remove_model(name)
        ex.send(200, "application/json; charset=utf-8", b"")

    def _h_api_embed(self, ex: _Exchange, body: dict[str, Any]) -> None:
        self._embed(ex, body, legacy=False)

    def _h_api_embeddings(self, ex: _Exchange, body: dict[str, Any]) -> None:
        self._embed(ex, body, legacy=True)

    def _embed(self, ex: _Exchange, body: dict[str, Any], *, legacy: bool) -> None:
        t0 = time.perf_counter_ns()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _RequestError(400, "model is required")
        spec = self.get_model(model)
        if spec is None:
            raise _RequestError(404, f'model "{model}" not found, try pulling it first')
        raw_input = body.get("prompt", "") if legacy else body.get("input", [])
        if isinstance(raw_input, str):
            texts = [raw_input] if (raw_input or not legacy) else []
        elif isinstance(raw_input, list) and all(isinstance(t, str) for t in raw_input):
            texts = list(raw_input)
        else:
            raise _RequestError(400, "invalid input type")
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        options = _validate_options(body.get("options"))
        dims = body.get("dimensions")
        want = dims if isinstance(dims, int) and not isinstance(dims, bool) and dims > 0 else 0
        embedder = getattr(self.engine, "embed", None)
        if not callable(embedder):
            embedder = _SCRIPTED.embed
        with self._use_model(ex, spec, options, keep_alive) as load_ns:
            if not texts:
                vectors: list[list[float]] = []
            else:
                try:
                    vectors = [list(v) for v in embedder(spec, texts)]
                except EmbeddingNotSupported:
                    # What Ollama's runner answers for a model without pooling (a chat
                    # model); the legacy endpoint turns every runner error into a 500.
                    raise _RequestError(
                        500 if legacy else 501, "this model does not support embeddings"
                    ) from None
        if want:  # Ollama truncates to `dimensions` and normalises again
            vectors = [normalize(v[:want]) if want < len(v) else v for v in vectors]
        if legacy:
            ex.send_json(200, {"embedding": vectors[0] if vectors else []})
            return
        out: dict[str, Any] = {"model": model, "embeddings": vectors}
        out["total_duration"] = time.perf_counter_ns() - t0
        out["load_duration"] = load_ns
        prompt_tokens = sum(len(t.split()) for t in texts)
        if prompt_tokens:
            out["prompt_eval_count"] = prompt_tokens
        ex.send_json(200, out)

    # ------------------------------------------------------------------ load / slots
    @contextlib.contextmanager
    def _use_model(
        self,
        ex: _Exchange,
        spec: StandInModel,
        options: dict[str, Any],
        keep_alive_ns: int | None,
    ) -> Iterator[int]:
        """Load ``spec`` if needed (paying ``load_delay``), pin it while the body runs."""
        num_ctx = int(options.get("num_ctx") or self.config.num_ctx)
        num_gpu = int(options.get("num_gpu", -1))
        ka = keep_alive_ns if keep_alive_ns is not None else self._keep_alive_ns(None)
        t0 = time.perf_counter_ns()
        with self._lock:
            self._purge_expired()
            lm = self._loaded.get(spec.name)
            reload = (
                lm is None or lm.context_length != num_ctx or (lm.num_gpu == 0) != (num_gpu == 0)
            )
            ready = self._ready.get(spec.name)
            if reload:
                lm = self.set_loaded(spec.name, context_length=num_ctx, num_gpu=num_gpu)
                ready = threading.Event()
                self._ready[spec.name] = ready
                owner = True
            else:
                owner = False
            assert lm is not None
            lm.in_flight += 1
        try:
            if owner:
                assert ready is not None
                try:
                    ex.sleep(self.config.load_delay)
                finally:
                    ready.set()
            elif ready is not None and not ready.is_set():
                while not ready.wait(_POLL):
                    if ex.stop_event.is_set() or ex.client_gone():
                        raise _Aborted
            load_ns = max(time.perf_counter_ns() - t0, 1_000)
            yield load_ns
        finally:
            with self._lock:
                lm.in_flight -= 1
                if lm.in_flight <= 0:
                    lm.in_flight = 0
                    if ka == 0:
                        if self._loaded.get(spec.name) is lm:
                            del self._loaded[spec.name]
                    else:
                        lm.keep_alive_ns = ka
                        lm.expires_at_ns = self._expiry(ka)

    @contextlib.contextmanager
    def _slot(self, ex: _Exchange) -> Iterator[None]:
        """One of ``num_parallel`` generation slots; 503 beyond ``max_queue`` waiters."""
        with self._slots:
            if self._active >= max(1, self.config.num_parallel):
                if self._waiting >= self.config.max_queue:
                    raise _RequestError(503, BUSY_MESSAGE)
                self._waiting += 1
                try:
                    while self._active >= max(1, self.config.num_parallel):
                        if ex.stop_event.is_set() or ex.client_gone():
                            raise _Aborted
                        self._slots.wait(_POLL)
                finally:
                    self._waiting -= 1
            self._active += 1
        try:
            yield
        finally:
            with self._slots:
                self._active -= 1
                self._slots.notify()

    # ------------------------------------------------------------------ chat / generate
    def _h_api_chat(self, ex: _Exchange, body: dict[str, Any]) -> None:
        self._complete(ex, body, generate=False)

    def _h_api_generate(self, ex: _Exchange, body: dict[str, Any]) -> None:
        self._complete(ex, body, generate=True)

    def _complete(self, ex: _Exchange, body: dict[str, Any], *, generate: bool) -> None:
        t_start = time.perf_counter_ns()
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        think_raw = body.get("think")
        if think_raw is not None and not isinstance(think_raw, bool):
            if not isinstance(think_raw, str) or think_raw not in _THINK_LEVELS:
                shown = json.dumps(think_raw) if not isinstance(think_raw, str) else think_raw
                raise _RequestError(
                    400,
                    f'invalid think value: "{shown}" (must be "high", "medium", "low", '
                    "true, or false)",
                )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _RequestError(400, "model is required")
        spec = self.get_model(model)
        if spec is None:
            raise _RequestError(404, f"model '{model}' not found")

        if generate:
            prompt = body.get("prompt") or ""
            if not isinstance(prompt, str):
                raise _RequestError(400, "json: cannot unmarshal into Go struct field prompt")
            messages: list[dict[str, Any]] = []
            system = body.get("system")
            if isinstance(system, str) and system:
                messages.append({"role": "system", "content": system})
            if prompt:
                messages.append({"role": "user", "content": prompt})
            empty = not prompt
        else:
            raw_messages = body.get("messages")
            if raw_messages is None:
                raw_messages = []
            if not isinstance(raw_messages, list) or not all(
                isinstance(m, dict) for m in raw_messages
            ):
                raise _RequestError(
                    400,
                    f"json: cannot unmarshal {_go_type(raw_messages)} into Go struct field "
                    "ChatRequest.messages of type []api.Message",
                )
            messages = [{**m, "role": str(m.get("role", "")).lower()} for m in raw_messages]
            empty = not messages

        options = _validate_options(body.get("options"))
        if empty:
            self._load_only(ex, spec, model, options, keep_alive, generate=generate)
            return

        if not spec.has("completion"):
            verb = "generate" if generate else "chat"
            raise _RequestError(400, f'"{model}" does not support {verb}')
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise _RequestError(400, "json: cannot unmarshal into Go struct field tools")
        if tools and not spec.has("tools"):
            raise _RequestError(400, f"{qualified_model_name(model)} does not support tools")
        think: bool | str | None
        if think_raw is None:
            think = True if spec.has("thinking") else None
        elif isinstance(think_raw, str):
            if spec.family not in ("gptoss", "gpt-oss"):
                raise _RequestError(
                    400, f'think value "{think_raw}" is not supported for this model'
                )
            think = think_raw
        else:
            if think_raw and not spec.has("thinking"):
                raise _RequestError(400, f'"{model}" does not support thinking')
            think = think_raw
        fmt = body.get("format")
        if fmt == "" or fmt is None:
            fmt = None
        elif fmt != "json" and not isinstance(fmt, dict):
            raw_fmt = json.dumps(fmt, separators=(",", ":"))
            raise _RequestError(
                500,
                f'invalid format: {json.dumps(raw_fmt)}; expected "json" or a valid JSON '
                "Schema object",
            )
        stream = body.get("stream", True) is not False

        turn = ChatTurn(
            model=model,
            spec=spec,
            messages=messages,
            tools=[t for t in tools if isinstance(t, dict)],
            format=fmt,
            options=options,
            think=think,
            instance=self.name,
        )
        with self._slot(ex), self._use_model(ex, spec, options, keep_alive) as load_ns:
            self._generate(
                ex, turn, stream=stream, generate=generate, t_start=t_start, load_ns=load_ns
            )

    def _load_only(
        self,
        ex: _Exchange,
        spec: StandInModel,
        model: str,
        options: dict[str, Any],
        keep_alive: int | None,
        *,
        generate: bool,
    ) -> None:
        if keep_alive == 0:
            self.unload(spec.name)
            reason = "unload"
        else:
            with self._use_model(ex, spec, options, keep_alive):
                pass
            reason = "load"
        out: dict[str, Any] = {"model": model, "created_at": rfc3339_nano()}
        if generate:
            out["response"] = ""
        else:
            out["message"] = {"role": "assistant", "content": ""}
        out["done"] = True
        out["done_reason"] = reason
        ex.send_json(200, out)

    def _generate(
        self,
        ex: _Exchange,
        turn: ChatTurn,
        *,
        stream: bool,
        generate: bool,
        t_start: int,
        load_ns: int,
    ) -> None:
        opts = turn.options
        num_predict = opts.get("num_predict")
        limit = int(num_predict) if isinstance(num_predict, (int, float)) else -1
        stops = opts.get("stop") or []
        stop_filter = _StopFilter([s for s in stops if isinstance(s, str)])
        token_delay = self.config.token_delay

        content: list[str] = []
        thinking: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        eval_count = 0
        done_reason = "stop"
        prompt_count: int | None = None
        engine_eval: int | None = None
        t_first: int | None = None

        def base() -> dict[str, Any]:
            return {"model": turn.model, "created_at": rfc3339_nano()}

        def text_chunk(
            text: str = "", think_text: str = "", calls: list[dict[str, Any]] | None = None
        ) -> dict[str, Any]:
            out = base()
            if generate:
                out["response"] = text
                if think_text:
                    out["thinking"] = think_text
            else:
                msg: dict[str, Any] = {"role": "assistant", "content": text}
                if think_text:
                    msg["thinking"] = think_text
                if calls:
                    msg["tool_calls"] = calls
                out["message"] = msg
            out["done"] = False
            return out

        def push(chunk: dict[str, Any]) -> bool:
            if not stream:
                return True
            return ex.emit(chunk)

        events: Iterator[EngineEvent] = iter(self.engine.chat(turn))
        ended_by_fault = False
        try:
            for event in events:
                if isinstance(event, DoneEvent):
                    done_reason = event.done_reason or done_reason
                    prompt_count = event.prompt_eval_count
                    engine_eval = event.eval_count
                    break
                ex.sleep(token_delay)
                if t_first is None:
                    t_first = time.perf_counter_ns()
                if isinstance(event, ToolCallEvent):
                    call = {
                        "id": _tool_call_id(),
                        "function": {
                            "index": len(tool_calls),
                            "name": event.name,
                            "arguments": event.arguments,
                        },
                    }
                    tool_calls.append(call)
                    eval_count += len(split_tokens(json.dumps(event.arguments))) + 1
                    if generate:
                        continue
                    if not push(text_chunk(calls=[call])):
                        ended_by_fault = True
                        break
                    continue
                eval_count += 1
                if isinstance(event, ThinkingToken):
                    thinking.append(event.text)
                    if not push(text_chunk(think_text=event.text)):
                        ended_by_fault = True
                        break
                elif isinstance(event, TextToken):
                    piece = stop_filter.feed(event.text)
                    if piece:
                        content.append(piece)
                        if not push(text_chunk(piece)):
                            ended_by_fault = True
                            break
                    if stop_filter.hit:
                        done_reason = "stop"
                        break
                if limit > 0 and eval_count >= limit:
                    done_reason = "length"
                    break
        except (_Aborted, OSError, _RequestError):
            raise
        except Exception as exc:
            message = f"an error was encountered while running the model: {exc}"
            if stream and ex.headers_sent:
                ex._write_chunk(_dumps({"error": message}) + b"\n")
                ex.end_stream()
                return
            raise _RequestError(500, message) from exc
        finally:
            close = getattr(events, "close", None)
            if callable(close):
                close()
        if ended_by_fault:
            return
        if not stop_filter.hit:
            tail = stop_filter.flush()
            if tail:
                content.append(tail)
                if stream and not push(text_chunk(tail)):
                    return

        t_end = time.perf_counter_ns()
        first = t_first or t_end
        final = base()
        text = "".join(content) if not stream else ""
        think_text = "".join(thinking) if not stream else ""
        if generate:
            final["response"] = text
            if think_text:
                final["thinking"] = think_text
            if tool_calls:
                final["tool_calls"] = tool_calls
        else:
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if think_text:
                msg["thinking"] = think_text
            if tool_calls and not stream:
                msg["tool_calls"] = tool_calls
            final["message"] = msg
        final["done"] = True
        final["done_reason"] = done_reason
        if generate and not turn.options.get("raw"):
            final["context"] = list(range(1, min(eval_count, 8) + 2))
        metrics = {
            "total_duration": t_end - t_start,
            "load_duration": load_ns,
            "prompt_eval_count": (
                prompt_count if prompt_count is not None else count_words(turn.messages)
            ),
            "prompt_eval_duration": max(first - t_start - load_ns, 1000),
            "eval_count": engine_eval if engine_eval is not None else eval_count,
            "eval_duration": max(t_end - first, 1000),
        }
        final.update({k: v for k, v in metrics.items() if v})
        if stream:
            if ex.emit(final, final=True):
                ex.end_stream()
        else:
            ex.send_json(200, final)


_SCRIPTED = ScriptedEngine()

_REQUEST_TYPES = {
    "/api/chat": "ChatRequest",
    "/api/generate": "GenerateRequest",
    "/api/show": "ShowRequest",
    "/api/embed": "EmbedRequest",
    "/api/embeddings": "EmbeddingRequest",
    "/api/delete": "DeleteRequest",
}

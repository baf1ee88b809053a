"""A real HTTP server on loopback that speaks Ollama's API: the stand-in behind every test.

Why a real server and not an httpx mock: the router under test talks to Ollama through
ollama-python and ChatOllama, and its failover logic keys on *transport* behaviour (connection
refused, a stream cut before its terminating chunk, a read that never returns). Only real
sockets reproduce those faithfully, and they let several "Ollama servers" run side by side in
one process, on fixed or ephemeral ports, stoppable and restartable on the same port.

Built on the standard library only (``http.server.ThreadingHTTPServer``, HTTP/1.1 with
hand-written chunked transfer encoding), so it adds no dependency to the project.

This module holds the public :class:`OllamaStandIn` (lifecycle, faults, request log, models,
dispatch); the rest is split along its seams: ``_wire`` (HTTP plumbing, Go-style JSON),
``_exchange`` (one request's framing and when an injected fault acts), ``_requests``
(options, ``keep_alive``, routes, stop sequences) and ``_endpoints`` (what each route answers).

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
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import EllipsisType
from typing import Any
from urllib.parse import urlsplit

from langchain_contextharbor.testing._endpoints import ENDPOINTS
from langchain_contextharbor.testing._exchange import _Exchange
from langchain_contextharbor.testing._requests import (
    _FOREVER_NS,
    _GIB,
    _NS,
    _REQUEST_TYPES,
    _ROUTES,
    parse_keep_alive,
)
from langchain_contextharbor.testing._wire import (
    _Aborted,
    _dumps,
    _go_json_error,
    _go_type,
    _Handler,
    _HTTPServer,
    _RequestError,
)
from langchain_contextharbor.testing.engines import Engine, ScriptedEngine
from langchain_contextharbor.testing.faults import (
    BUSY_MESSAGE,
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
)

__all__ = ["OllamaStandIn", "RequestRecord", "StandInConfig", "parse_keep_alive"]


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
            ENDPOINTS[path](self, ex, body if isinstance(body, dict) else {})
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

"""A real HTTP server on loopback that speaks Ollama's API: the stand-in behind every test.

Why a real server and not an httpx mock: the router under test talks to Ollama through
ollama-python and ChatOllama, and its failover logic keys on *transport* behaviour (connection
refused, a stream cut before its terminating chunk, a read that never returns). Only real
sockets reproduce those faithfully, and they let several "Ollama servers" run side by side in
one process, on fixed or ephemeral ports, stoppable and restartable on the same port.

Built on the standard library only (``http.server.ThreadingHTTPServer``, HTTP/1.1 with
hand-written chunked transfer encoding), so it adds no dependency to the project.

This module holds the public :class:`OllamaStandIn` (lifecycle, models, dispatch; its fault
injection and request log come from the ``_faults_log`` mixin); the rest is split along its
seams: ``_wire`` (HTTP plumbing, Go-style JSON),
``_exchange`` (one request's framing and when an injected fault acts), ``_requests``
(options, ``keep_alive``, routes, stop sequences), ``_endpoints`` (what each route answers),
and the state the endpoints share, each owned by one object: ``_residency`` (loaded models,
expiry, loads in progress) and ``_slots`` (``num_parallel`` and the queue); ``_values``
holds ``StandInConfig`` and ``RequestRecord``. None of them imports this module.

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
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from langchain_contextharbor.testing._endpoints import (
    BLOB_METHODS,
    BLOBS_PREFIX,
    ENDPOINTS,
    Blob,
    blob_endpoint,
)
from langchain_contextharbor.testing._exchange import _Exchange
from langchain_contextharbor.testing._faults_log import _FaultsAndLog
from langchain_contextharbor.testing._requests import (
    _REQUEST_TYPES,
    _ROUTES,
    host_allowed,
    origin_allowed,
    parse_keep_alive,
)
from langchain_contextharbor.testing._residency import Residency
from langchain_contextharbor.testing._slots import Slots
from langchain_contextharbor.testing._values import RequestRecord, StandInConfig
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
    Fault,
    FaultTable,
)
from langchain_contextharbor.testing.models import (
    LoadedModel,
    StandInModel,
    normalize_model_name,
)

__all__ = ["OllamaStandIn", "RequestRecord", "StandInConfig", "parse_keep_alive"]


# ---------------------------------------------------------------------------- the stand-in
class OllamaStandIn(_FaultsAndLog):
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
        self.residency = Residency(cfg)
        """The loaded models (``/api/ps``), their expiry and loads in progress."""
        self.slots = Slots(cfg)
        """The ``num_parallel`` generation slots and the queue before them."""
        for name in cfg.loaded:
            self.set_loaded(name)
        self.blobs: dict[str, Blob] = {}
        """Files uploaded with ``POST /api/blobs/<digest>`` (their size and GGUF header)."""
        self._faults = FaultTable()
        self._log: deque[RequestRecord] = deque(maxlen=max(1, cfg.max_log))
        self._log_lock = threading.Lock()
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
        self.slots.wake_all()
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

    # ------------------------------------------------------------------ slots
    @property
    def in_flight(self) -> int:
        """Requests generating right now (holding a ``num_parallel`` slot)."""
        with self.slots.lock:
            return self.slots.active

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        with self.slots.lock:
            return self.slots.waiting

    # ------------------------------------------------------------------ models
    @property
    def models(self) -> list[StandInModel]:
        """Models this instance has (``/api/tags``)."""
        with self._lock:
            return list(self._models.values())

    @property
    def loaded(self) -> list[LoadedModel]:
        """Models resident now (``/api/ps``), expired ones dropped."""
        return self.residency.models()

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
            self.residency.unload(key)

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
        with self._lock:
            spec = self._models.get(normalize_model_name(name))
        if spec is None:
            raise KeyError(f"model {name!r} is not one of this stand-in's models")
        return self.residency.load(
            spec,
            size=size,
            size_vram=size_vram,
            context_length=context_length,
            expires_in=expires_in,
            num_gpu=num_gpu,
        )

    def unload(self, name: str | None = None) -> None:
        """Evict ``name`` (every model when ``None``) from ``/api/ps``."""
        self.residency.unload(None if name is None else normalize_model_name(name))

    # ------------------------------------------------------------------ request plumbing
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
        if path.startswith(BLOBS_PREFIX):
            pass  # an uploaded file, not JSON (and not kept in the request log)
        elif raw.strip():
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as exc:
                parse_error = _go_json_error(raw, exc)
            except UnicodeDecodeError:
                parse_error = "invalid character looking for beginning of value"
        record = self._record(method, path, body)
        ex = _Exchange(handler, record, self.config, self._stop_event, self._release)
        host = handler.headers.get("Host", "")
        if not host_allowed(host, self.host) or not origin_allowed(
            handler.headers.get("Origin", ""), host, self.config.origins
        ):
            # the CORS check and allowedHostsMiddleware: a bare 403 before any route (and
            # before any injected fault, which this request does not consume)
            with contextlib.suppress(OSError):
                ex.send_status(403)
            return
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

        blob = path[len(BLOBS_PREFIX) :] if path.startswith(BLOBS_PREFIX) else None
        allowed = _ROUTES.get(path) if blob is None else BLOB_METHODS
        if allowed is None or blob == "" or (blob is not None and "/" in blob):
            ex.send(404, "text/plain", b"404 page not found")
            return
        if method not in allowed:
            ex.send(405, "text/plain", b"405 method not allowed")
            return
        try:
            if blob is not None:
                blob_endpoint(self, ex, method, blob, raw)
                return
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

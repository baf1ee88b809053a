"""httpx transports that give a chat request two read deadlines.

Why: ollama-python's client has no timeout by default (a hung server blocks forever),
and httpx has a single ``read`` timeout. A router needs two: a long *first-token*
deadline (Ollama sends its headers together with the first chunk, after loading the
model and evaluating the prompt) and a short *idle* deadline between chunks once the
stream runs. These wrappers set ``read`` to the first-token value for the wait on the
response head, then lower it to the idle value before the body is read. httpcore reads
the body's timeout when body iteration starts, so the switch costs nothing per chunk.

The first-token deadline of one attempt can be shortened through :data:`FIRST_TOKEN`, a
context variable the call loop sets around an attempt when no model load is coming (the
model is loaded there and the server answered recently): a hung warm server then costs
seconds, not the cold-load allowance. Context variables, because one transport serves
every thread and task that calls the same backend.

Two more jobs sit here because this is where the answer's head arrives, below the call
loops (which need no change for either):

- **Evidence ends a doomed wait.** A backend with no probe evidence yet (a fresh router
  whose first probe of it is still out, or one whose last probe failed) gets a
  :class:`ProbeWatch` as its first-token deadline: the request waits for that probe's
  health verdict, at most the probe timeout plus a margin, instead of the cold-load
  allowance. "Down" ends the attempt at once (the call moves on to the next backend);
  "up" sends it with the normal cold-load deadline. A GPU server that accepts
  connections and never answers costs a fresh instance the probe timeout, not
  ``Timeouts.first_token``.
- **Know what a server is.** Every Ollama answer to ``/api/chat`` and ``/api/embed`` is
  JSON (``application/json`` or ``application/x-ndjson``), and its error bodies are
  ``{"error": "..."}``. Anything else (an HTML page, a directory listing, a 501 from a
  plain web server, JSON of another shape) raises :class:`NotOllamaResponse`, which the
  classifier treats as a backend fault: the call fails over and the attempt names the
  backend and what answered, never a raw third-party error text.

Every timeout raised through these transports names the deadline that ran out and its
value (``first-token deadline 120.0s (Timeouts.first_token) ran out``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import ssl
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import httpx
from pydantic import BaseModel, field_serializer

from langchain_contextharbor.backends import BackendConfig, Timeouts

__all__ = [
    "CALL_DEADLINE",
    "ERROR_BODY_LIMIT",
    "EVIDENCE_MARGIN",
    "FIRST_TOKEN",
    "AsyncPhaseTimeoutTransport",
    "MaskedClientKwargs",
    "NotOllamaResponse",
    "PhaseTimeoutTransport",
    "ProbeEvidenceTimeout",
    "ProbeWatch",
    "content_type",
    "inner_client_kwargs",
    "not_ollama_reason",
    "probe_client",
    "shared_ssl_context",
    "ssl_context_ready",
]

_SSL: dict[tuple[Any, ...], ssl.SSLContext] = {}
_SSL_LOCK = threading.Lock()


_PLAIN: list[ssl.SSLContext] = []


def shared_ssl_context(verify: Any = True, cert: Any = None, *, tls: bool = True) -> Any:
    """One SSL context per ``(verify, cert)`` for every client of the process.

    Why: each httpx client or transport otherwise builds its own context and loads the CA
    bundle into it (35-95 ms and a few hundred kB each, measured on this project's CI
    machine), and a HybridChatOllama has up to five per backend (probe client, sync and
    async transports of each inner model). A context is safe to share between clients.
    Anything unhashable (or a context already) is handed back unchanged.

    ``tls=False`` (a plain ``http://`` server, Ollama's usual case): httpx still wants a
    context, but none is ever used, so it gets a bare one with no CA bundle loaded (any
    TLS connection through it would fail verification, never pass unchecked)."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if not tls:
        with _SSL_LOCK:
            if not _PLAIN:
                _PLAIN.append(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            return _PLAIN[0]
    try:
        key = (verify, cert)
        hash(key)
    except TypeError:
        return verify
    with _SSL_LOCK:
        ctx = _SSL.get(key)
        if ctx is None:
            ctx = _SSL[key] = httpx.create_ssl_context(verify=verify, cert=cert)
        return ctx


def ssl_context_ready(verify: Any = True, cert: Any = None, *, tls: bool = True) -> bool:
    """Whether :func:`shared_ssl_context` would answer at once (no CA bundle to load)."""
    try:
        return not tls or isinstance(verify, ssl.SSLContext) or (verify, cert) in _SSL
    except TypeError:
        return False


def _transport_kw(kw: dict[str, Any]) -> dict[str, Any]:
    kw = dict(kw)
    kw["verify"] = shared_ssl_context(kw.get("verify", True), kw.pop("cert", None))
    return kw


FIRST_TOKEN: ContextVar[float | None] = ContextVar("contextharbor_first_token", default=None)
"""A shorter first-token deadline (seconds) for the request sent from this context, or None."""

CALL_DEADLINE: ContextVar[float | None] = ContextVar("contextharbor_deadline", default=None)
"""``time.monotonic()`` by which the current call must end (``Timeouts(total=...)``); the
call loop sets it while a request is sent and its head awaited. Every phase timeout of
that request is capped at the time left, so a stalled server cannot outlive the call."""


EVIDENCE_MARGIN = 0.5
"""Seconds on top of the probe timeout that a :class:`ProbeWatch` waits for the verdict:
the probe's own timeout fires at the timeout, and the verdict must not race it."""

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error answer read to tell Ollama's ``{"error": ...}`` from anything else."""


class ProbeWatch(float):
    """A first-token deadline that holds only until a probe tells whether the server is up.

    Its value is the seconds left, when it was made, until the probe in flight must have
    told (probe timeout + :data:`EVIDENCE_MARGIN` after the probe started). ``verdict``
    is that probe's health future: ``None`` (up) or the reason it is down. ``until`` is
    the same bound as a ``time.perf_counter()`` time. Made by
    :meth:`~langchain_contextharbor._table.BackendTable.first_token_deadline`, read by the
    transports below; a float, so everything else treats it as a deadline in seconds."""

    __slots__ = ("backend", "probe_timeout", "until", "verdict")

    backend: str
    probe_timeout: float
    until: float
    verdict: concurrent.futures.Future[str | None]

    @classmethod
    def make(
        cls,
        backend: str,
        verdict: concurrent.futures.Future[str | None],
        until: float,
        probe_timeout: float,
    ) -> ProbeWatch:
        w = cls(max(0.0, until - time.perf_counter()))
        w.backend, w.verdict, w.until, w.probe_timeout = backend, verdict, until, probe_timeout
        return w

    def describe(self) -> str:
        p = self.probe_timeout
        return (
            f"first-token deadline until the probe's verdict {p + EVIDENCE_MARGIN:g}s "
            f"(probe timeout {p:g}s + {EVIDENCE_MARGIN:g}s)"
        )

    def outcome(self, request: httpx.Request) -> None:
        """After the wait: return when the probe said "up"; else raise the attempt's end."""
        f = self.verdict
        if f.done():
            try:
                reason = f.result()
            except BaseException as exc:  # pragma: no cover - the prober sets results only
                reason = f"{type(exc).__name__}: {exc}"
            if reason is None:
                return
            raise ProbeEvidenceTimeout(
                f"ended by probe evidence before any answer: the probe of {self.backend} "
                f"found it down ({reason}); {self.describe()}",
                request=request,
            )
        raise ProbeEvidenceTimeout(
            f"{self.describe()} ran out: no verdict from the probe of {self.backend}",
            request=request,
        )


class ProbeEvidenceTimeout(httpx.ReadTimeout):
    """An attempt ended by probe evidence before its request was sent (see ProbeWatch)."""


class NotOllamaResponse(httpx.RemoteProtocolError):
    """The server answered something that is not Ollama's protocol (see the module doc)."""


def content_type(headers: Any) -> str:
    """The media type of a raw header list (lower case, no parameters; "" when absent).
    A loop over raw pairs: a tenth of ``Headers.get``'s cost, on every answer's head."""
    for k, v in headers.raw:
        if k.lower() == b"content-type":
            return str(v.split(b";", 1)[0].strip().lower().decode("latin-1"))
    return ""


_OLLAMA_TYPES = frozenset({"application/json", "application/x-ndjson"})


def not_ollama_reason(status: int, ctype: str, body: bytes | None) -> str | None:
    """Why an answer is not Ollama's protocol, or None when it may be. Pure.

    Ollama answers its API paths with JSON; its error bodies are ``{"error": "<text>"}``
    (so a 501 ``{"error": ...}`` is Ollama's own and stays a request error). ``body`` is
    the error body when the status is 400 or more (None: not read). An error answer with
    no body and no type (Ollama's 403 for a foreign ``Host`` header) may be Ollama's.
    Redirects (3xx) never reach this test: the client follows them."""
    what = f"HTTP {status}, {ctype or 'no content type'}"
    if ctype not in _OLLAMA_TYPES:
        if status >= 400 and not ctype and not body:
            return None
        return f"{what}: not an Ollama server"
    if status < 400 or body is None:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return f"{what} that is not JSON: not an Ollama server"
    if not (isinstance(data, dict) and isinstance(data.get("error"), str)):
        return f'{what} without Ollama\'s {{"error": ...}} body: not an Ollama server'
    return None


def _fault(request: httpx.Request, name: str | None, reason: str) -> NotOllamaResponse:
    where = f"{name} " if name else ""
    path = request.url.path
    return NotOllamaResponse(
        f"{where}answered {request.method} {path} with {reason}", request=request
    )


def _timeouts(t: Timeouts, first: float | None) -> dict[str, float]:
    if first is None or first > t.first_token:
        first = t.first_token
    out = {"connect": t.connect, "read": first, "write": t.idle, "pool": first}
    deadline = CALL_DEADLINE.get()
    if deadline is not None:
        left = max(0.001, deadline - time.monotonic())
        for k, v in out.items():
            out[k] = min(v, left)
    return out


def _watch_left(w: ProbeWatch) -> float:
    """Seconds to wait for a probe's verdict: until the watch's bound, within the call's."""
    left = w.until - time.perf_counter()
    deadline = CALL_DEADLINE.get()
    if deadline is not None:
        left = min(left, deadline - time.monotonic())
    return max(0.0, left)


def _idle(t: Timeouts) -> float:
    deadline = CALL_DEADLINE.get()
    if deadline is None:
        return t.idle
    return min(t.idle, max(0.001, deadline - time.monotonic()))


def _named(
    exc: httpx.TimeoutException,
    t: Timeouts,
    first: float | None,
    used: Mapping[str, float],
    request: httpx.Request,
) -> httpx.TimeoutException:
    """The same timeout, saying which deadline ran out, its value and where it came from."""
    if isinstance(exc, httpx.ConnectTimeout):
        what, v, full, src = "connect", used["connect"], t.connect, "Timeouts.connect"
    elif isinstance(exc, httpx.WriteTimeout):
        what, v, full, src = "write", used["write"], t.idle, "Timeouts.idle"
    else:
        what = "connection-pool" if isinstance(exc, httpx.PoolTimeout) else "first-token"
        v, full, src = used["read"], t.first_token, "Timeouts.first_token"
        if first is not None and first < full:
            full, src = first, "warm: no model load expected"
    if v < full and CALL_DEADLINE.get() is not None:
        src = "capped by Timeouts.total"
    return type(exc)(f"{what} deadline {v:.1f}s ({src}) ran out: {exc}", request=request)


class _IdleNamed(httpx.SyncByteStream):
    """The body stream; a read timeout in it names the idle deadline (one frame per chunk)."""

    __slots__ = ("_idle", "_inner", "_request")

    def __init__(self, inner: Any, idle: float, request: httpx.Request) -> None:
        self._inner, self._idle, self._request = inner, idle, request

    def __iter__(self) -> Any:
        try:
            yield from self._inner
        except httpx.ReadTimeout as exc:
            raise httpx.ReadTimeout(
                f"idle deadline {self._idle:.1f}s (Timeouts.idle) ran out between chunks: {exc}",
                request=self._request,
            ) from exc

    def close(self) -> None:
        self._inner.close()


class _AsyncIdleNamed(httpx.AsyncByteStream):
    """The async twin of :class:`_IdleNamed`."""

    __slots__ = ("_idle", "_inner", "_request")

    def __init__(self, inner: Any, idle: float, request: httpx.Request) -> None:
        self._inner, self._idle, self._request = inner, idle, request

    async def __aiter__(self) -> Any:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.ReadTimeout as exc:
            raise httpx.ReadTimeout(
                f"idle deadline {self._idle:.1f}s (Timeouts.idle) ran out between chunks: {exc}",
                request=self._request,
            ) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


def _bounded_body(chunks: Any) -> bytes | None:
    """Join ``chunks`` while within :data:`ERROR_BODY_LIMIT` (None past it)."""
    buf = bytearray()
    for c in chunks:
        buf += c
        if len(buf) > ERROR_BODY_LIMIT:
            return None
    return bytes(buf)


def _rebuilt(response: httpx.Response, body: bytes, request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=body,
        request=request,
        extensions=response.extensions,
    )


class PhaseTimeoutTransport(httpx.BaseTransport):
    """Phase deadlines, probe-evidence waits and the Ollama-protocol check (module doc)."""

    def __init__(
        self,
        timeouts: Timeouts,
        inner: httpx.BaseTransport | None = None,
        *,
        name: str | None = None,
        **kw: Any,
    ):
        self._t = timeouts
        self._name = name
        self._inner = inner if inner is not None else httpx.HTTPTransport(**_transport_kw(kw))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        first = FIRST_TOKEN.get()
        if type(first) is ProbeWatch:  # no evidence yet: wait for the probe's verdict
            concurrent.futures.wait([first.verdict], timeout=_watch_left(first))
            first.outcome(request)
            first = None  # the probe says up: the cold-load deadline
        t = _timeouts(self._t, first)
        request.extensions["timeout"] = t
        try:
            response = self._inner.handle_request(request)
        except httpx.TimeoutException as exc:
            raise _named(exc, self._t, first, t, request) from exc
        idle = t["read"] = _idle(self._t)
        status = response.status_code
        ctype = content_type(response.headers)
        if (ctype not in _OLLAMA_TYPES or status >= 400) and not 300 <= status < 400:
            body = None
            if status >= 400:
                try:
                    body = _bounded_body(response.stream)
                finally:
                    response.close()
                if body is None:
                    raise _fault(
                        request,
                        self._name,
                        f"HTTP {status}, an error body over "
                        f"{ERROR_BODY_LIMIT} bytes: not an Ollama server",
                    )
            reason = not_ollama_reason(status, ctype, body)
            if reason is not None:
                response.close()
                raise _fault(request, self._name, reason)
            if body is not None:
                return _rebuilt(response, body, request)
        response.stream = _IdleNamed(response.stream, idle, request)
        return response

    def close(self) -> None:
        self._inner.close()


class AsyncPhaseTimeoutTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`PhaseTimeoutTransport`."""

    def __init__(
        self,
        timeouts: Timeouts,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        name: str | None = None,
        **kw: Any,
    ):
        self._t = timeouts
        self._name = name
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(**_transport_kw(kw))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        first = FIRST_TOKEN.get()
        if type(first) is ProbeWatch:  # no evidence yet: wait for the probe's verdict
            left = _watch_left(first)
            if not first.verdict.done() and left > 0:
                await asyncio.wait([asyncio.wrap_future(first.verdict)], timeout=left)
            first.outcome(request)
            first = None  # the probe says up: the cold-load deadline
        t = _timeouts(self._t, first)
        request.extensions["timeout"] = t
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException as exc:
            raise _named(exc, self._t, first, t, request) from exc
        idle = t["read"] = _idle(self._t)
        status = response.status_code
        ctype = content_type(response.headers)
        if (ctype not in _OLLAMA_TYPES or status >= 400) and not 300 <= status < 400:
            body = None
            if status >= 400:
                try:
                    buf = bytearray()
                    async for c in response.stream:  # type: ignore[union-attr]
                        buf += c
                        if len(buf) > ERROR_BODY_LIMIT:
                            break
                    body = bytes(buf) if len(buf) <= ERROR_BODY_LIMIT else None
                finally:
                    await response.aclose()
                if body is None:
                    raise _fault(
                        request,
                        self._name,
                        f"HTTP {status}, an error body over "
                        f"{ERROR_BODY_LIMIT} bytes: not an Ollama server",
                    )
            reason = not_ollama_reason(status, ctype, body)
            if reason is not None:
                await response.aclose()
                raise _fault(request, self._name, reason)
            if body is not None:
                return _rebuilt(response, body, request)
        response.stream = _AsyncIdleNamed(response.stream, idle, request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _connection(cfg: BackendConfig) -> tuple[dict[str, Any], Any, Any, Any]:
    """What every client of backend ``cfg`` is built from: the remaining ``client_kwargs``,
    the user's sync and async transports (or None), and the process-wide TLS context for
    ``verify`` / ``cert`` (a ``verify`` in ``client_kwargs`` beats the field; none loaded
    for a plain ``http://`` server). The one place TLS and transports are read."""
    extra = dict(cfg.client_kwargs)
    sync_t = extra.pop("transport", None)
    async_t = extra.pop("async_transport", None)
    tls = not cfg.plain_url.startswith("http://")
    verify = shared_ssl_context(extra.pop("verify", cfg.verify), extra.pop("cert", None), tls=tls)
    return extra, sync_t, async_t, verify


def probe_client(cfg: BackendConfig) -> httpx.Client:
    """The router's own client for backend ``cfg`` (probes, ``/api/show``, trials,
    calibration): a plain URL with the credentials as headers (httpx and httpcore log
    request URLs, and their error texts quote them), the probe timeout (a request may set
    its own), and the same TLS context and transport as the inner models' clients."""
    extra, sync_t, _, verify = _connection(cfg)
    t = cfg.timeouts
    return httpx.Client(
        base_url=cfg.plain_url,
        auth=cfg.auth,
        timeout=httpx.Timeout(t.probe, connect=min(t.connect, t.probe)),
        verify=verify,
        transport=sync_t,
        **extra,
    )


def inner_client_kwargs(cfg: BackendConfig) -> dict[str, Any]:
    """The client arguments of an inner langchain-ollama model (ChatOllama or
    OllamaEmbeddings) for backend ``cfg``: a plain URL (credentials travel as a header), the
    phase-timeout transports, and the process-wide TLS context (none loaded for a plain
    ``http://`` server). Built from :func:`_connection`, as the probe client is."""
    extra, sync_t, async_t, verify = _connection(cfg)
    tkw: dict[str, Any] = {"verify": verify}
    return {
        "base_url": cfg.plain_url,
        "client_kwargs": {"auth": cfg.auth, **extra},
        "sync_client_kwargs": {
            "transport": PhaseTimeoutTransport(cfg.timeouts, sync_t, name=cfg.name, **tkw)
        },
        "async_client_kwargs": {
            "transport": AsyncPhaseTimeoutTransport(cfg.timeouts, async_t, name=cfg.name, **tkw)
        },
    }


_CLIENT_KWARGS = ("client_kwargs", "async_client_kwargs", "sync_client_kwargs")


def _masked(v: Any) -> Any:
    return {k: "***" for k in v} if isinstance(v, Mapping) else v


class MaskedClientKwargs(BaseModel):
    """Mix into an inner langchain-ollama model (before it in the bases): its client kwargs
    carry the credential headers, so reprs and dumps name the keys but never show values."""

    def __repr_args__(self) -> Any:
        for k, v in super().__repr_args__():
            yield (k, _masked(v) if k in _CLIENT_KWARGS else v)

    @field_serializer(*_CLIENT_KWARGS, check_fields=False)
    def _dump_client_kwargs(self, v: dict[str, Any] | None) -> dict[str, str] | None:
        return None if v is None else _masked(v)

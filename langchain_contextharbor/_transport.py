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

- **Deadlines on bytes, bounds on memory.** The reply's body is read through a guard
  (:class:`_Guard`) that sees every chunk the socket gives: the total deadline (the call's,
  else ``Timeouts.total`` of this request, else a generous default,
  :data:`DEFAULT_STREAM_S`), an idle deadline on *substantive* progress (endless empty
  chunks and a trickle of bytes are no progress), a bound on one line
  (:data:`LINE_LIMIT`: an endless line is a :class:`MalformedReply`, not all the memory)
  and a non-empty 200 body. A server that sends a byte every few seconds without a newline
  cannot outlive them: they are checked between bytes, not between NDJSON lines.

Every timeout raised through these transports names the deadline that ran out and its
value (``first-token deadline 120.0s (Timeouts.first_token) ran out``).

The pieces live in private modules (re-exported here): :mod:`._deadlines` (the context
variables and phase timeouts), :mod:`._evidence_wait` (:class:`ProbeWatch`),
:mod:`._protocol_check` (:class:`NotOllamaResponse`), :mod:`._guard` (the byte guard) and
:mod:`._tls` (the shared TLS context); this module wires them into the transports and
builds the clients.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import BaseModel, field_serializer

from langchain_contextharbor._deadlines import (
    CALL_DEADLINE,
    DEFAULT_STREAM_S,
    FIRST_TOKEN,
    _deadline,
    _idle,
    _named,
    _timeouts,
)
from langchain_contextharbor._evidence_wait import (
    EVIDENCE_MARGIN,
    ProbeEvidenceTimeout,
    ProbeWatch,
    _watch_left,
)
from langchain_contextharbor._guard import (
    LINE_LIMIT,
    MAX_EMPTY_CHUNKS,
    PROGRESS_BYTES,
    MalformedReply,
    StreamDeadline,
    _AsyncGuarded,
    _Guard,
    _Guarded,
)
from langchain_contextharbor._protocol_check import (
    _OLLAMA_TYPES,
    ERROR_BODY_LIMIT,
    NotOllamaResponse,
    _bounded_body,
    _fault,
    _rebuilt,
    content_type,
    not_ollama_reason,
)
from langchain_contextharbor._tls import _transport_kw, shared_ssl_context, ssl_context_ready
from langchain_contextharbor.backends import BackendConfig, Timeouts

__all__ = [
    "CALL_DEADLINE",
    "DEFAULT_STREAM_S",
    "ERROR_BODY_LIMIT",
    "EVIDENCE_MARGIN",
    "FIRST_TOKEN",
    "LINE_LIMIT",
    "MAX_EMPTY_CHUNKS",
    "PROGRESS_BYTES",
    "AsyncPhaseTimeoutTransport",
    "MalformedReply",
    "MaskedClientKwargs",
    "NotOllamaResponse",
    "PhaseTimeoutTransport",
    "ProbeEvidenceTimeout",
    "ProbeWatch",
    "StreamDeadline",
    "content_type",
    "inner_client_kwargs",
    "not_ollama_reason",
    "probe_client",
    "shared_ssl_context",
    "ssl_context_ready",
]


class PhaseTimeoutTransport(httpx.BaseTransport):
    """Phase deadlines, probe-evidence waits and the Ollama-protocol check (module doc)."""

    def __init__(
        self,
        timeouts: Timeouts,
        inner: httpx.BaseTransport | None = None,
        *,
        name: str | None = None,
        line_limit: int | None = None,
        **kw: Any,
    ):
        self._t = timeouts
        self._name = name
        self._limit = LINE_LIMIT if line_limit is None else line_limit
        self._inner = inner if inner is not None else httpx.HTTPTransport(**_transport_kw(kw))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        first = FIRST_TOKEN.get()
        if type(first) is ProbeWatch:  # no evidence yet: wait for the probe's verdict
            concurrent.futures.wait([first.verdict], timeout=_watch_left(first))
            first.outcome(request)
            first = None  # the probe says up: the cold-load deadline
        deadline, source, capped = _deadline(self._t)
        t = _timeouts(self._t, first, deadline if capped else None)
        request.extensions["timeout"] = t
        try:
            response = self._inner.handle_request(request)
        except httpx.TimeoutException as exc:
            raise _named(exc, self._t, first, t, request, capped) from exc
        idle = t["read"] = _idle(self._t, deadline)
        status = response.status_code
        guard = _Guard(request, idle, (deadline, source), self._limit, self._name, status == 200)
        stream = _Guarded(response.stream, guard)
        ctype = content_type(response.headers)
        if (ctype not in _OLLAMA_TYPES or status >= 400) and not 300 <= status < 400:
            body = None
            if status >= 400:
                try:
                    body = _bounded_body(stream)
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
        response.stream = stream
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
        line_limit: int | None = None,
        **kw: Any,
    ):
        self._t = timeouts
        self._name = name
        self._limit = LINE_LIMIT if line_limit is None else line_limit
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(**_transport_kw(kw))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        first = FIRST_TOKEN.get()
        if type(first) is ProbeWatch:  # no evidence yet: wait for the probe's verdict
            left = _watch_left(first)
            if not first.verdict.done() and left > 0:
                await asyncio.wait([asyncio.wrap_future(first.verdict)], timeout=left)
            first.outcome(request)
            first = None  # the probe says up: the cold-load deadline
        deadline, source, capped = _deadline(self._t)
        t = _timeouts(self._t, first, deadline if capped else None)
        request.extensions["timeout"] = t
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException as exc:
            raise _named(exc, self._t, first, t, request, capped) from exc
        idle = t["read"] = _idle(self._t, deadline)
        status = response.status_code
        guard = _Guard(request, idle, (deadline, source), self._limit, self._name, status == 200)
        stream = _AsyncGuarded(response.stream, guard)
        ctype = content_type(response.headers)
        if (ctype not in _OLLAMA_TYPES or status >= 400) and not 300 <= status < 400:
            body = None
            if status >= 400:
                try:
                    buf = bytearray()
                    async for c in stream:
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
        response.stream = stream
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

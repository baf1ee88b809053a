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
"""

from __future__ import annotations

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
    "FIRST_TOKEN",
    "AsyncPhaseTimeoutTransport",
    "MaskedClientKwargs",
    "PhaseTimeoutTransport",
    "inner_client_kwargs",
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


def _timeouts(t: Timeouts) -> dict[str, float]:
    first = FIRST_TOKEN.get()
    if first is None or first > t.first_token:
        first = t.first_token
    out = {"connect": t.connect, "read": first, "write": t.idle, "pool": first}
    deadline = CALL_DEADLINE.get()
    if deadline is not None:
        left = max(0.001, deadline - time.monotonic())
        for k, v in out.items():
            out[k] = min(v, left)
    return out


def _idle(t: Timeouts) -> float:
    deadline = CALL_DEADLINE.get()
    if deadline is None:
        return t.idle
    return min(t.idle, max(0.001, deadline - time.monotonic()))


class PhaseTimeoutTransport(httpx.BaseTransport):
    def __init__(self, timeouts: Timeouts, inner: httpx.BaseTransport | None = None, **kw: Any):
        self._t = timeouts
        self._inner = inner if inner is not None else httpx.HTTPTransport(**_transport_kw(kw))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        t = _timeouts(self._t)
        request.extensions["timeout"] = t
        response = self._inner.handle_request(request)
        t["read"] = _idle(self._t)
        return response

    def close(self) -> None:
        self._inner.close()


class AsyncPhaseTimeoutTransport(httpx.AsyncBaseTransport):
    def __init__(
        self, timeouts: Timeouts, inner: httpx.AsyncBaseTransport | None = None, **kw: Any
    ):
        self._t = timeouts
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(**_transport_kw(kw))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = _timeouts(self._t)
        request.extensions["timeout"] = t
        response = await self._inner.handle_async_request(request)
        t["read"] = _idle(self._t)
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
        headers=cfg.request_headers,
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
        "client_kwargs": {"headers": dict(cfg.request_headers), **extra},
        "sync_client_kwargs": {"transport": PhaseTimeoutTransport(cfg.timeouts, sync_t, **tkw)},
        "async_client_kwargs": {
            "transport": AsyncPhaseTimeoutTransport(cfg.timeouts, async_t, **tkw)
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

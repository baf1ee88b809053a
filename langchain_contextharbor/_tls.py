"""One TLS context per ``(verify, cert)`` for every httpx client of the process.

Why a module of its own: the transports (:mod:`._transport`) and the pool's cost estimate
(:mod:`._pool`) both ask it, and it depends on nothing of the package.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import httpx

__all__ = ["shared_ssl_context", "ssl_context_ready"]

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

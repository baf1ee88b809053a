"""The Ollama-protocol check on an answer's head and error body (see :mod:`._transport`'s
module doc, "Know what a server is"): pure tests over the status, the media type and a
bounded error body, and the :class:`NotOllamaResponse` they raise.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["ERROR_BODY_LIMIT", "NotOllamaResponse", "content_type", "not_ollama_reason"]

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error answer read to tell Ollama's ``{"error": ...}`` from anything else."""


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

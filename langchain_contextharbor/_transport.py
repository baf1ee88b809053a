"""httpx transports that give a chat request two read deadlines.

Why: ollama-python's client has no timeout by default (a hung server blocks forever),
and httpx has a single ``read`` timeout. A router needs two: a long *first-token*
deadline (Ollama sends its headers together with the first chunk, after loading the
model and evaluating the prompt) and a short *idle* deadline between chunks once the
stream runs. These wrappers set ``read`` to the first-token value for the wait on the
response head, then lower it to the idle value before the body is read. httpcore reads
the body's timeout when body iteration starts, so the switch costs nothing per chunk.
"""

from __future__ import annotations

from typing import Any

import httpx

from langchain_contextharbor.backends import Timeouts

__all__ = ["AsyncPhaseTimeoutTransport", "PhaseTimeoutTransport"]


def _timeouts(t: Timeouts) -> dict[str, float]:
    return {"connect": t.connect, "read": t.first_token, "write": t.idle, "pool": t.first_token}


class PhaseTimeoutTransport(httpx.BaseTransport):
    def __init__(self, timeouts: Timeouts, inner: httpx.BaseTransport | None = None, **kw: Any):
        self._t = timeouts
        self._inner = inner if inner is not None else httpx.HTTPTransport(**kw)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        t = _timeouts(self._t)
        request.extensions["timeout"] = t
        response = self._inner.handle_request(request)
        t["read"] = self._t.idle
        return response

    def close(self) -> None:
        self._inner.close()


class AsyncPhaseTimeoutTransport(httpx.AsyncBaseTransport):
    def __init__(
        self, timeouts: Timeouts, inner: httpx.AsyncBaseTransport | None = None, **kw: Any
    ):
        self._t = timeouts
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(**kw)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = _timeouts(self._t)
        request.extensions["timeout"] = t
        response = await self._inner.handle_async_request(request)
        t["read"] = self._t.idle
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()

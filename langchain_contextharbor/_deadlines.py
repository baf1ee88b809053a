"""The deadlines of one request: the context variables the call loop sets, the total
deadline a request runs under, its phase timeouts, and timeout errors that name the deadline
that ran out. Pure values and the clock; read by the transports (:mod:`._transport`) once
per request, never per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar

import httpx

from langchain_contextharbor.backends import Timeouts

__all__ = ["CALL_DEADLINE", "DEFAULT_STREAM_S", "FIRST_TOKEN"]

FIRST_TOKEN: ContextVar[float | None] = ContextVar("contextharbor_first_token", default=None)
"""A shorter first-token deadline (seconds) for the request sent from this context, or None."""

CALL_DEADLINE: ContextVar[float | None] = ContextVar("contextharbor_deadline", default=None)
"""``time.monotonic()`` by which the current call must end (``Timeouts(total=...)``); the
call loop sets it while a request is sent and its head awaited. Every phase timeout of
that request is capped at the time left, so a stalled server cannot outlive the call."""

DEFAULT_STREAM_S = 4096.0
"""Seconds after the first-token deadline that a request may run when no
``Timeouts(total=)`` applies: Ollama's default context (4,096 tokens, which bounds an
answer sent without ``num_predict``) at one token per second, the slowest speed at which a
router still serves a chat. A fixed cap, not one read from the request: the transport
would have to parse every request body to learn ``num_predict`` (router CPU on every
call), and an unset ``num_predict`` is the common case anyway. It only bounds what nothing
else does (a server streaming substantive tokens forever); stalls, trickles and empty
chunks end at the idle deadline long before."""


def _deadline(t: Timeouts) -> tuple[float, str, bool]:
    """This request's total deadline (``time.monotonic()``), where it comes from, and
    whether it caps the phase timeouts: the call's (:data:`CALL_DEADLINE`, set by the chat
    model's call loop), else ``Timeouts.total`` from now (an embedding batch, whose loop
    sets none), else the default (:data:`DEFAULT_STREAM_S` after the first-token
    deadline), which never shortens a phase."""
    deadline = CALL_DEADLINE.get()
    if deadline is not None:
        return deadline, "Timeouts.total", True
    now = time.monotonic()
    if t.total is not None:
        return now + t.total, f"Timeouts.total {t.total:g}s", True
    return (
        now + t.first_token + DEFAULT_STREAM_S,
        f"default: Timeouts.first_token + {DEFAULT_STREAM_S:g}s",
        False,
    )


def _timeouts(t: Timeouts, first: float | None, cap: float | None) -> dict[str, float]:
    if first is None or first > t.first_token:
        first = t.first_token
    out = {"connect": t.connect, "read": first, "write": t.idle, "pool": first}
    if cap is not None:
        left = max(0.001, cap - time.monotonic())
        for k, v in out.items():
            out[k] = min(v, left)
    return out


def _idle(t: Timeouts, deadline: float) -> float:
    return min(t.idle, max(0.001, deadline - time.monotonic()))


def _named(
    exc: httpx.TimeoutException,
    t: Timeouts,
    first: float | None,
    used: Mapping[str, float],
    request: httpx.Request,
    capped: bool,
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
    if v < full and capped:
        src = "capped by Timeouts.total"
    return type(exc)(f"{what} deadline {v:.1f}s ({src}) ran out: {exc}", request=request)

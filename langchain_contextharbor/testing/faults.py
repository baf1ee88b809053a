"""Fault injection for the Ollama stand-in.

A router's failover is only as good as the failures it was tested against, so each fault here
reproduces one way a real Ollama server (or the network in front of it) fails, on the wire,
with the exception ollama-python / ChatOllama raise for it:

- ``REFUSE``: the listener is closed (exactly ``stop()``) until ``clear_faults()`` reopens
  it on the same port. Client: ``httpx.ConnectError``.
- ``ACCEPT_HANG``: the TCP connection is accepted and the request read, nothing is ever
  written. Client: ``httpx.ReadTimeout``.
- ``HANG_BEFORE_FIRST_CHUNK``: nothing is written, not even the status line: a model stuck
  loading. Client: ``httpx.ReadTimeout`` waiting for the response headers.
- ``HANG_AFTER_HEADERS``: ``200`` and the NDJSON headers are flushed, then no body. Client:
  ``httpx.ReadTimeout`` on the first chunk.
- ``HANG_MID_STREAM``: K chunks, then silence. Client: K chunks, then ``httpx.ReadTimeout``.
- ``CUT_MID_STREAM``: K chunks, then the socket is closed without the terminating
  zero-length chunk. Client: K chunks, then ``httpx.RemoteProtocolError``.
- ``ERROR_MID_STREAM``: K chunks, one ``{"error": ...}`` line, a clean end of the body (no
  ``done`` chunk). Client: K chunks, then ``ollama.ResponseError`` with status_code -1. With
  K=0 the framing is the advertised version's (``StandInConfig.version``): from 0.12.6 (the
  default 0.14.3) a ``500 {"error": ...}`` answer (``status=`` overrides the 500), client
  ``ResponseError`` 500; at 0.12.0-0.12.5 HTTP 200 and the error line, status_code -1.
- ``MALFORMED_LINE``: K chunks, then a line that is not JSON. Client:
  ``json.JSONDecodeError``.
- ``SLOW_FIRST_TOKEN``: ``delay`` seconds (default 1) of silence, then a normal stream.
- ``OOM``: ``500 {"error": "model requires more system memory (X GiB) than is available
  (Y GiB)"}``. Client: ``ResponseError`` 500.
- ``BUSY``: ``503`` with the two-space "server busy, please try again.  maximum pending
  requests exceeded". Client: ``ResponseError`` 503.
- ``MODEL_NOT_FOUND``: ``404 {"error": "model 'x' not found"}`` (``/api/embed``: the
  double-quoted "try pulling it first" text). Client: ``ResponseError`` 404.
- ``HTTP_ERROR``: any ``status`` / ``message`` (default 500 "llama runner process has
  terminated: CUDA error: out of memory"). Client: ``ResponseError`` with that status.

A non-streaming request (``stream: false``) meets the stream faults at its single response:
hangs stall before it, ``CUT_MID_STREAM`` sends the headers and half the body and closes,
``MALFORMED_LINE`` replaces the body, ``ERROR_MID_STREAM`` answers 500.

Hangs wait on an event that ``clear_faults()`` and ``stop()`` set (and never longer than the
instance's ``hang_cap``), so a test's teardown never blocks on a hung handler thread. A hang
released by ``clear_faults()`` resumes the response normally; one released by ``stop()`` or
by the cap drops the connection.

By default a fault matches only ``POST /api/chat``: like a real Ollama whose ``/`` and
``/api/tags`` keep answering while generation is stuck. ``REFUSE`` and ``ACCEPT_HANG`` hit
every path. ``paths=`` narrows or widens that (``paths=None`` means every path).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from langchain_contextharbor.testing.models import human_bytes2

__all__ = [
    "BUSY_MESSAGE",
    "MODEL_RUNNER_CRASH_MESSAGE",
    "Fault",
    "FaultRule",
    "FaultTable",
    "oom_message",
]

#: Ollama's ``ErrMaxQueue`` text; note the TWO spaces after the period.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
#: Default text of ``HTTP_ERROR``: what a runner crash while loading looks like.
MODEL_RUNNER_CRASH_MESSAGE = "llama runner process has terminated: CUDA error: out of memory"
#: Default text of the ``{"error": ...}`` line of ``ERROR_MID_STREAM``.
MID_STREAM_ERROR_MESSAGE = "an error was encountered while running the model: unexpected EOF"
#: What ``MALFORMED_LINE`` writes instead of a JSON object (a proxy's HTML error page).
MALFORMED_LINE = "<html><body><h1>502 Bad Gateway</h1></body></html>"


def oom_message(required_bytes: int, available_bytes: int) -> str:
    """Ollama's ``verifyLayout`` text for a model that does not fit in system RAM."""
    return (
        f"model requires more system memory ({human_bytes2(required_bytes)}) "
        f"than is available ({human_bytes2(available_bytes)})"
    )


class Fault(str, Enum):
    """The failure modes a stand-in can inject (see the module docstring for the wire view)."""

    REFUSE = "refuse"
    ACCEPT_HANG = "accept_hang"
    HANG_BEFORE_FIRST_CHUNK = "hang_before_first_chunk"
    HANG_AFTER_HEADERS = "hang_after_headers"
    HANG_MID_STREAM = "hang_mid_stream"
    CUT_MID_STREAM = "cut_mid_stream"
    ERROR_MID_STREAM = "error_mid_stream"
    MALFORMED_LINE = "malformed_line"
    SLOW_FIRST_TOKEN = "slow_first_token"
    OOM = "oom"
    BUSY = "busy"
    MODEL_NOT_FOUND = "model_not_found"
    HTTP_ERROR = "http_error"

    @property
    def is_error_response(self) -> bool:
        """Faults answered with a JSON error before any generation happens."""
        return self in _ERROR_RESPONSES

    @property
    def is_hang(self) -> bool:
        """Faults that block the handler until released or capped."""
        return self in _HANGS


_ERROR_RESPONSES = frozenset({Fault.OOM, Fault.BUSY, Fault.MODEL_NOT_FOUND, Fault.HTTP_ERROR})
_HANGS = frozenset(
    {
        Fault.ACCEPT_HANG,
        Fault.HANG_BEFORE_FIRST_CHUNK,
        Fault.HANG_AFTER_HEADERS,
        Fault.HANG_MID_STREAM,
    }
)
#: Paths a fault matches when ``paths`` is not given.
DEFAULT_FAULT_PATHS: tuple[str, ...] = ("/api/chat",)


@dataclass
class FaultRule:
    """One injected fault and how many more requests it applies to.

    ``remaining=None`` means "until ``clear_faults()``". ``after_chunks`` is K for the
    mid-stream faults (the fault acts after K NDJSON lines, and at the latest just before the
    final ``done`` line). ``delay`` is the stall of ``SLOW_FIRST_TOKEN``, the wait before an
    error response, or, for hangs, a finite hang length after which the response resumes.
    ``paths=None`` matches every path.
    """

    fault: Fault
    remaining: int | None = None
    after_chunks: int = 0
    delay: float | None = None
    paths: tuple[str, ...] | None = DEFAULT_FAULT_PATHS
    status: int | None = None
    message: str | None = None
    applied: int = 0

    def matches(self, path: str) -> bool:
        """Whether this rule applies to a request for ``path``."""
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.paths is None or path in self.paths


@dataclass
class FaultTable:
    """Thread-safe list of active rules; the first matching rule wins and is consumed."""

    rules: list[FaultRule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, rule: FaultRule) -> FaultRule:
        """Register ``rule`` behind the existing ones."""
        with self._lock:
            self.rules.append(rule)
        return rule

    def take(self, path: str) -> FaultRule | None:
        """Return (and count down) the first rule matching ``path``, if any."""
        with self._lock:
            for rule in self.rules:
                if rule.matches(path):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    rule.applied += 1
                    return rule
            return None

    def clear(self) -> None:
        """Forget every rule."""
        with self._lock:
            self.rules.clear()

    def active(self) -> list[FaultRule]:
        """Rules that can still match a request."""
        with self._lock:
            return [r for r in self.rules if r.remaining is None or r.remaining > 0]


def normalize_paths(
    fault: Fault, paths: Sequence[str] | str | None, *, given: bool
) -> tuple[str, ...] | None:
    """Resolve the ``paths`` argument of ``inject`` to the rule's tuple (``None`` = all)."""
    if not given:
        if fault in (Fault.REFUSE, Fault.ACCEPT_HANG):
            return None
        return DEFAULT_FAULT_PATHS
    if paths is None:
        return None
    if isinstance(paths, str):
        return (paths,)
    return tuple(paths)

"""The byte guard on a reply's body (see :mod:`._transport`'s module doc, "Deadlines on
bytes, bounds on memory"): the total deadline, the idle deadline on substantive progress,
the line bound, UTF-8 and a non-empty 200 body, checked on every chunk the socket gives.

The per-chunk loops (:class:`_Guarded`, :class:`_AsyncGuarded`) live here with the constants
they read, so each chunk costs exactly the module-global lookups it did before the split.
"""

from __future__ import annotations

import codecs
import os
import time
from typing import Any

import httpx

from langchain_contextharbor._protocol_check import NotOllamaResponse

__all__ = [
    "LINE_LIMIT",
    "MAX_EMPTY_CHUNKS",
    "PROGRESS_BYTES",
    "MalformedReply",
    "StreamDeadline",
]


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        return default
    return value if value > 0 else default


LINE_LIMIT = _env_bytes("CONTEXTHARBOR_MAX_LINE_BYTES", 16 * 1024 * 1024)
"""The longest line (bytes between two newlines; a whole JSON body when it has none) a
reply may have: 16 MiB unless ``CONTEXTHARBOR_MAX_LINE_BYTES`` says otherwise (read when a
transport is built; ``PhaseTimeoutTransport(line_limit=)`` for one backend). An Ollama
chat line is a few hundred bytes and an ``/api/embed`` body of 64 texts of 4,096
dimensions about 5 MiB; a line past the bound is a malformed reply
(:class:`MalformedReply`), so an endless line costs at most this much memory, not all of it.
Raise it for batches of thousands of large vectors."""

PROGRESS_BYTES = 64 * 1024
"""Bytes of one unfinished line that count as progress for the idle deadline: a large
body arriving at a modest rate keeps going; a trickle of a few bytes a second does not."""

MAX_EMPTY_CHUNKS = 4096
"""Empty chat chunks in a row that end a reply as no progress, before the idle deadline
does: a server sending them as fast as loopback goes would otherwise have every one of
them held by the call loop (a stream holds chunks until the first substantive one) for
the whole idle deadline, hundreds of MB in 30 s. 4,096 of them is about 5 MB held."""

_EMPTY_CHUNKS = (b'"content":""},"done":false}\n', b'"content": ""}, "done": false}\n')
"""How an Ollama chat line with nothing in it ends (``content`` empty, no ``thinking``
nor ``tool_calls`` after it, not the final line), with Go's and Python's JSON spacing. A
suffix test (``endswith``), because a substring search costs ten times more per chunk; a
server writing its fields in another order has its empty chunks counted as progress
(the idle deadline then still ends a silent one, not an endless empty one)."""


class MalformedReply(NotOllamaResponse):
    """A reply in Ollama's media type whose content is not a valid Ollama answer: a line
    over :data:`LINE_LIMIT`, an empty 200 body, fields of the wrong type, vectors that are
    not vectors. A backend fault, classified as malformed (failover, counted)."""


class StreamDeadline(httpx.ReadTimeout):
    """A deadline the body guard enforced itself (total, or idle on substantive progress)."""


class _Guard:
    """What the stream wrappers enforce on every read of a reply's body, between bytes
    rather than between lines (a reply that never sends a newline meets them too):

    - the **total deadline** (a ``time.monotonic()`` time): the call's
      (:data:`CALL_DEADLINE`), else this request's ``Timeouts.total``, else the default
      (:data:`DEFAULT_STREAM_S` after the first-token deadline). Checked on each chunk;
      the socket read timeout was set to ``min(idle, time left)`` when the body began
      (httpcore reads it once per body), so a silent server overruns a deadline by at
      most one idle read, and a trickling one by at most the gap between two of its bytes.
    - the **idle deadline on substantive progress**: a chunk counts when it holds a whole
      line that is not an empty chat chunk (:data:`_EMPTY_CHUNKS`), or when it brings a
      long unfinished line :data:`PROGRESS_BYTES` further (the short tail of a line split
      across two reads is neither progress nor an empty chunk). Endless empty chunks or a byte
      every few seconds end ``Timeouts.idle`` after the last real progress, or after
      :data:`MAX_EMPTY_CHUNKS` empty chunks in a row (a silent server ends at the
      socket's read timeout, as before).
    - the **line bound** (:data:`LINE_LIMIT`), **UTF-8** and a **non-empty body** (an
      empty 200 is a malformed reply: Ollama always sends at least its final ``done``
      line).

    The per-chunk cost is one clock read, an ``isascii``, one ``find`` and, for a
    one-line chunk, two short ``in`` tests (plus an incremental UTF-8 decode of a chunk
    that is not ASCII): no JSON is parsed here."""

    __slots__ = (
        "deadline",
        "empties",
        "idle",
        "limit",
        "line",
        "need_body",
        "pending",
        "progress",
        "request",
        "seen",
        "source",
        "utf8",
        "where",
    )

    def __init__(
        self,
        request: httpx.Request,
        idle: float,
        deadline: tuple[float, str],
        limit: int,
        name: str | None,
        need_body: bool,
    ) -> None:
        self.request, self.idle = request, idle
        self.deadline, self.source = deadline
        self.limit, self.need_body = limit, need_body
        self.where = f"{name} " if name else ""
        self.line = 0
        """Bytes of the unfinished line."""
        self.pending = 0
        """Bytes of it not yet counted as progress."""
        self.progress = time.monotonic()
        """When the last substantive progress came."""
        self.empties = 0
        """Empty chat chunks since then."""
        self.seen = False
        self.utf8: Any = None
        """An incremental UTF-8 decoder, made at the first byte that is not ASCII."""

    def step(self, chunk: bytes) -> None:
        """One chunk's bookkeeping (the sync and async wrappers share it); raises when a
        bound is crossed."""
        now = time.monotonic()
        if now >= self.deadline:
            raise self.timeout()
        self.seen = True
        if not chunk.isascii() or (self.utf8 is not None and self.utf8.getstate()[0]):
            self.text(chunk)
        n = len(chunk)
        nl = chunk.find(b"\n")
        if nl < 0:
            line = self.line = self.line + n
            if line > self.limit:
                raise self.too_long(line)
            self.pending += n
            if self.pending >= PROGRESS_BYTES:
                self.pending, self.progress, self.empties = 0, now, 0
                return
        else:
            if self.line + nl > self.limit:
                raise self.too_long(self.line + nl)
            split = self.line > 0  # the chunk's first line began in an earlier chunk
            if nl != n - 1:  # several lines: progress unless all whole ones are empty
                self.line = self.pending = n - chunk.rfind(b"\n") - 1
                lines = chunk.count(b"\n") - split
                empty = chunk.count(_EMPTY_CHUNKS[0]) + chunk.count(_EMPTY_CHUNKS[1])
                if lines > empty:
                    self.progress, self.empties = now, 0
                    return
                self.empties += empty
            else:
                self.line = self.pending = 0
                if chunk.endswith(_EMPTY_CHUNKS):
                    self.empties += 1
                elif not split:  # a whole line with something in it
                    self.progress, self.empties = now, 0
                    return
                # else: the tail of a line split across reads: neither progress nor empty
            if self.empties > MAX_EMPTY_CHUNKS:
                raise self.quiet(f"{self.empties} empty chunks in a row")
        if now - self.progress > self.idle:
            raise self.quiet(f"for {now - self.progress:.1f}s")

    def text(self, chunk: bytes) -> None:
        """Check that the body is UTF-8 (Ollama's always is; httpx would put U+FFFD in
        place of the bad bytes and the reply would be believed)."""
        if self.utf8 is None:
            self.utf8 = codecs.getincrementaldecoder("utf-8")()
        try:
            self.utf8.decode(chunk)
        except UnicodeDecodeError as exc:
            raise MalformedReply(
                f"{self.where}answered {self.request.url.path} with bytes that are not "
                f"UTF-8 ({exc.reason}): a malformed reply",
                request=self.request,
            ) from None

    def timeout(self, exc: Exception | None = None) -> httpx.ReadTimeout:
        if exc is not None:
            return httpx.ReadTimeout(
                f"idle deadline {self.idle:.1f}s (Timeouts.idle) ran out between chunks: {exc}",
                request=self.request,
            )
        return StreamDeadline(
            f"total deadline ({self.source}) ran out while the reply was streaming",
            request=self.request,
        )

    def quiet(self, what: str) -> httpx.ReadTimeout:
        return StreamDeadline(
            f"idle deadline {self.idle:.1f}s (Timeouts.idle) ran out: no substantive "
            f"progress {what} (only empty chunks or a trickle of bytes)",
            request=self.request,
        )

    def too_long(self, n: int) -> MalformedReply:
        return MalformedReply(
            f"{self.where}answered {self.request.url.path} with a line over {self.limit} "
            f"bytes ({n} read without a newline): a malformed reply",
            request=self.request,
        )

    def empty(self) -> MalformedReply:
        return MalformedReply(
            f"{self.where}answered {self.request.url.path} with an empty 200 body: "
            "a malformed reply",
            request=self.request,
        )


class _Guarded(httpx.SyncByteStream):
    """The body stream of a reply, under its :class:`_Guard`."""

    __slots__ = ("_guard", "_inner")

    def __init__(self, inner: Any, guard: _Guard) -> None:
        self._inner, self._guard = inner, guard

    def __iter__(self) -> Any:
        g = self._guard
        step, mono, deadline = g.step, time.monotonic, g.deadline
        try:
            for chunk in self._inner:
                if chunk:
                    # The common chunk, inline: one whole ASCII line, not an empty one.
                    now = mono()
                    if (
                        now < deadline
                        and chunk.find(b"\n") == len(chunk) - 1
                        and not g.line
                        and chunk.isascii()
                        and not chunk.endswith(_EMPTY_CHUNKS)
                        and g.utf8 is None
                    ):
                        g.progress, g.empties, g.seen = now, 0, True
                    else:
                        step(chunk)
                yield chunk
        except StreamDeadline:
            raise
        except httpx.ReadTimeout as exc:
            raise g.timeout(exc) from exc
        if not g.seen and g.need_body:
            raise g.empty()

    def close(self) -> None:
        self._inner.close()


class _AsyncGuarded(httpx.AsyncByteStream):
    """The async twin of :class:`_Guarded`."""

    __slots__ = ("_guard", "_inner")

    def __init__(self, inner: Any, guard: _Guard) -> None:
        self._inner, self._guard = inner, guard

    async def __aiter__(self) -> Any:
        g = self._guard
        step, mono, deadline = g.step, time.monotonic, g.deadline
        try:
            async for chunk in self._inner:
                if chunk:
                    # The common chunk, inline: one whole ASCII line, not an empty one.
                    now = mono()
                    if (
                        now < deadline
                        and chunk.find(b"\n") == len(chunk) - 1
                        and not g.line
                        and chunk.isascii()
                        and not chunk.endswith(_EMPTY_CHUNKS)
                        and g.utf8 is None
                    ):
                        g.progress, g.empties, g.seen = now, 0, True
                    else:
                        step(chunk)
                yield chunk
        except StreamDeadline:
            raise
        except httpx.ReadTimeout as exc:
            raise g.timeout(exc) from exc
        if not g.seen and g.need_body:
            raise g.empty()

    async def aclose(self) -> None:
        await self._inner.aclose()

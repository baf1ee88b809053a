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
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import json
import os
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


def _watch_left(w: ProbeWatch) -> float:
    """Seconds to wait for a probe's verdict: until the watch's bound, within the call's."""
    left = w.until - time.perf_counter()
    deadline = CALL_DEADLINE.get()
    if deadline is not None:
        left = min(left, deadline - time.monotonic())
    return max(0.0, left)


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

DEFAULT_STREAM_S = 4096.0
"""Seconds after the first-token deadline that a request may run when no
``Timeouts(total=)`` applies: Ollama's default context (4,096 tokens, which bounds an
answer sent without ``num_predict``) at one token per second, the slowest speed at which a
router still serves a chat. A fixed cap, not one read from the request: the transport
would have to parse every request body to learn ``num_predict`` (router CPU on every
call), and an unset ``num_predict`` is the common case anyway. It only bounds what nothing
else does (a server streaming substantive tokens forever); stalls, trickles and empty
chunks end at the idle deadline long before."""

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

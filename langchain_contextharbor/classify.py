"""The one place that decides what an exception means for failover.

Why one function: string-matching errors in several places is how routers end up
pinning a model to the CPU forever or missing Ollama's out-of-memory text. Everything
that needs to know "try the next backend?", "count it against the backend's breaker?"
or "remember that this model does not fit here?" asks :func:`classify_exception`.

The facts behind the table come from what ollama-python and httpx actually raise
(see the project's reference notes): a closed port is ``httpx.ConnectError`` on the
streaming path (builtin ``ConnectionError`` on the non-streaming one), a stall is
``httpx.ReadTimeout``, a cut stream ``httpx.RemoteProtocolError``, an ``{"error"}``
line mid-stream ``ollama.ResponseError`` with ``status_code == -1``.

A reply of another shape than ollama-python assumes (a JSON list or string as a line, a
body that is not UTF-8) makes it raise a plain ``AttributeError``, ``TypeError`` or
``UnicodeDecodeError``; those are malformed replies too when the traceback shows they were
raised reading the reply (:func:`raised_reading_reply`), and stay fatal when raised from the
caller's own input.

An answer that is not Ollama's protocol at all (an HTML page, a plain web server's 501,
JSON of another shape) is the *backend's* fault, whatever its status: the router's
transport raises :class:`~langchain_contextharbor._transport.NotOllamaResponse` for it
(failover, counted), and a reply the client could not read as Ollama's
(pydantic's ``ValidationError`` on ``ChatResponse`` and friends, an HTML error text) is
classified the same way. Ollama's own 501 (``{"error": "... does not support ..."}``)
stays a request error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import httpx

from langchain_contextharbor._transport import NotOllamaResponse
from langchain_contextharbor.errors import (
    AllBackendsFailedError,
    AllBackendsUnreachableError,
    AttemptRecord,
    DeadlineExceededError,
    EmptyResponseError,
    ModelNotAvailableError,
    NoBackendAvailableError,
    SkipRecord,
    TruncatedStreamError,
)

__all__ = [
    "Classification",
    "FailoverCategory",
    "all_failed_error",
    "classify_exception",
    "raised_reading_reply",
]


class FailoverCategory(str, Enum):
    """What kind of failure an exception is, from a router's point of view."""

    CONNECT = "connect"
    """The server could not be reached (refused, DNS, connect timeout)."""
    TIMEOUT = "timeout"
    """The server accepted but stalled past a read timeout (hang, first token, idle)."""
    TRANSPORT = "transport"
    """The connection broke (cut mid-stream, protocol error)."""
    SERVER_ERROR = "server_error"
    """A 5xx other than out-of-memory, or a 401/403 from a proxy in front of Ollama."""
    OUT_OF_MEMORY = "out_of_memory"
    """The model does not fit on that server right now (Ollama's 500 memory texts)."""
    BUSY = "busy"
    """503: Ollama's queue is full; the server is healthy but saturated."""
    MODEL_NOT_FOUND = "model_not_found"
    """404: the model is not pulled on that server."""
    STREAM_ERROR = "stream_error"
    """An ``{"error": ...}`` line in the middle of a stream (status -1)."""
    MALFORMED = "malformed"
    """The server sent something that is not the protocol (bad JSON line, empty stream)."""
    FATAL = "fatal"
    """The request itself is wrong (400, validation, parsing): another backend won't help."""
    CANCELLED = "cancelled"
    """The caller cancelled; never retried."""


@dataclass(frozen=True)
class Classification:
    category: FailoverCategory
    failover: bool
    """Try the next backend (when nothing has reached the caller yet)."""
    counts_against_backend: bool
    """Feed the backend's circuit breaker."""
    status_code: int | None = None
    slow_accept: bool = field(default=False, compare=False)
    """A connect timeout (the handshake did not complete in time), as opposed to a refused
    or reset connection: what a healthy server with a full accept queue gives under a rush.
    The breaker forgives it on a server that answers (see
    :mod:`~langchain_contextharbor.breaker`). A refinement of ``CONNECT``, left out of
    equality: two classifications that fail over and count alike compare equal."""

    @property
    def is_oom(self) -> bool:
        return self.category is FailoverCategory.OUT_OF_MEMORY


_OOM_MARKERS = (
    "requires more system memory",
    "out of memory",
    "cudamalloc failed",
    "memory layout cannot be allocated",
    "failed to commit memory",
    "insufficient memory",
    "not enough memory",
)


# On Python 3.10 the asyncio and futures timeouts are not the builtin TimeoutError.
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)


def _c(
    cat: FailoverCategory, failover: bool, counts: bool, status: int | None = None
) -> Classification:
    return Classification(cat, failover, counts, status)


_SLOW_ACCEPT = Classification(FailoverCategory.CONNECT, True, True, slow_accept=True)


_RESPONSE_TYPES = frozenset(
    {
        "ChatResponse",
        "EmbedResponse",
        "EmbeddingsResponse",
        "GenerateResponse",
        "ShowResponse",
        "ListResponse",
        "ProcessResponse",
    }
)
"""ollama-python's reply models: a ``ValidationError`` on one is a reply of another shape."""


def _looks_html(low: str) -> bool:
    head = low.lstrip()[:16]
    return head.startswith(("<!doctype", "<html", "<head", "<body", "<?xml"))


def _classify_response_error(status: int, text: str) -> Classification:
    low = text.lower()
    if _looks_html(low):  # a web page where Ollama answers {"error": ...}: not Ollama
        return _c(FailoverCategory.MALFORMED, True, True, status)
    if status == -1:
        if any(m in low for m in _OOM_MARKERS):
            return _c(FailoverCategory.OUT_OF_MEMORY, True, False, status)
        return _c(FailoverCategory.STREAM_ERROR, True, True, status)
    if status == 404:
        return _c(FailoverCategory.MODEL_NOT_FOUND, True, False, status)
    if status == 503:
        return _c(FailoverCategory.BUSY, True, False, status)
    if status == 499:
        return _c(FailoverCategory.CANCELLED, False, False, status)
    if status == 501:
        # "this model does not support embeddings": the model cannot do what was asked, on
        # any server; failing over would only repeat the answer (and blame a healthy one).
        return _c(FailoverCategory.FATAL, False, False, status)
    if status >= 500:
        if any(m in low for m in _OOM_MARKERS):
            return _c(FailoverCategory.OUT_OF_MEMORY, True, False, status)
        return _c(FailoverCategory.SERVER_ERROR, True, True, status)
    if status in (401, 403, 407, 408, 429):
        # Not Ollama's own answers: a proxy or auth layer in front of one server.
        return _c(FailoverCategory.SERVER_ERROR, True, True, status)
    return _c(FailoverCategory.FATAL, False, False, status)


def classify_exception(exc: BaseException) -> Classification:
    """Classify ``exc`` for failover. Pure; never raises."""
    # Imported here so that importing this module stays cheap; ollama is a dependency
    # of langchain-ollama and is always installed.
    from ollama import ResponseError

    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)):
        return _c(FailoverCategory.CANCELLED, False, False)
    if isinstance(exc, ResponseError):
        return _classify_response_error(int(exc.status_code), str(exc.error))
    if isinstance(exc, NotOllamaResponse):  # before TransportError: it is one, but worse
        return _c(FailoverCategory.MALFORMED, True, True)
    if isinstance(exc, DeadlineExceededError):  # the call's budget, not the server's fault
        return _c(FailoverCategory.TIMEOUT, False, False)
    if isinstance(exc, EmptyResponseError):  # the model's (empty) answer: as ChatOllama
        return _c(FailoverCategory.FATAL, False, False)
    if isinstance(exc, httpx.ConnectTimeout):
        return _SLOW_ACCEPT
    if isinstance(exc, httpx.ConnectError):
        return _c(FailoverCategory.CONNECT, True, True)
    if isinstance(exc, httpx.TimeoutException):
        return _c(FailoverCategory.TIMEOUT, True, True)
    if isinstance(exc, httpx.DecodingError):
        return _c(FailoverCategory.MALFORMED, True, True)
    if isinstance(exc, httpx.TransportError):
        return _c(FailoverCategory.TRANSPORT, True, True)
    if isinstance(exc, httpx.HTTPStatusError):
        try:
            text = exc.response.text
        except httpx.ResponseNotRead:  # a streamed response nobody read
            text = ""
        return _classify_response_error(exc.response.status_code, text)
    if isinstance(exc, _TIMEOUTS):
        return _c(FailoverCategory.TIMEOUT, True, True)
    if isinstance(exc, ConnectionError):
        return _c(FailoverCategory.CONNECT, True, True)
    if isinstance(exc, (json.JSONDecodeError, TruncatedStreamError)):
        return _c(FailoverCategory.MALFORMED, True, True)
    if _is_reply_validation(exc):
        return _c(FailoverCategory.MALFORMED, True, True)
    if isinstance(exc, _READING_ERRORS) and raised_reading_reply(exc):
        return _c(FailoverCategory.MALFORMED, True, True)
    return _c(FailoverCategory.FATAL, False, False)


_READING_ERRORS = (AttributeError, TypeError, ValueError, KeyError, IndexError)
"""What ollama-python raises on a reply of another shape than it assumes: ``part.get``
on a JSON list or string (AttributeError), ``cls(**part)`` on a list (TypeError), a body
that is not UTF-8 (UnicodeDecodeError, a ValueError)."""

_CLIENT_FILES = ("ollama/_client.py", "ollama\\_client.py")


def raised_reading_reply(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by ollama-python while it read a reply, not while it
    built or sent the request from the caller's input (that stays fatal). Read from the
    traceback, so only on failure, never per chunk: a frame of ollama's ``_client.py``
    that is the stream reader (``inner``) on one of its reply lines (``for line in
    r.iter_lines()``, ``part = json.loads(line)``, ``part.get('error')``,
    ``yield cls(**part)``), or ``_request`` parsing a whole answer
    (``cls(**...json())``) with the request itself (``_request_raw``) already returned."""
    import linecache

    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    for i, f in enumerate(frames):
        code = f.tb_frame.f_code
        if not code.co_filename.endswith(_CLIENT_FILES):
            continue
        if code.co_name == "inner":
            text = linecache.getline(code.co_filename, f.tb_lineno)
            if "part" in text or "iter_lines" in text:
                return True
        elif code.co_name == "_request":
            deeper = frames[i + 1].tb_frame.f_code.co_name if i + 1 < len(frames) else None
            if deeper != "_request_raw" and ".json()" in linecache.getline(
                code.co_filename, f.tb_lineno
            ):
                return True
    return False


def _is_reply_validation(exc: BaseException) -> bool:
    """A pydantic error on one of ollama-python's reply models (a request's own validation
    error, on ``ChatRequest`` or ``Message`` built from the caller's input, stays fatal:
    those are raised before anything is sent, from ``*Request`` models)."""
    title = getattr(exc, "title", None)
    if not isinstance(title, str) or title not in _RESPONSE_TYPES:
        return False
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return False
    return isinstance(exc, ValidationError)


def all_failed_error(
    model: str,
    attempts: Sequence[AttemptRecord],
    skipped: Sequence[SkipRecord],
    exceptions: Sequence[BaseException],
    pull_targets: Sequence[tuple[str, str]],
) -> AllBackendsFailedError:
    """The error for a call whose every candidate failed or was skipped.

    One rule for chat and embeddings, so both raise the same class for the same outcome:
    the model is missing everywhere -> :class:`ModelNotAvailableError` (with the ``ollama
    pull`` line per server, ``pull_targets`` = ``(host:port, backend name)``); nothing
    could be tried -> :class:`NoBackendAvailableError`; every attempt failed to connect
    -> :class:`AllBackendsUnreachableError` (also a ``ConnectionError``); else
    :class:`AllBackendsFailedError`.
    """
    cats = {a.category for a in attempts}
    skip_missing = all("not found" in s.reason or "not in this server" in s.reason for s in skipped)
    cls: type[AllBackendsFailedError] = AllBackendsFailedError
    hint = None
    if (
        (not attempts or cats == {FailoverCategory.MODEL_NOT_FOUND.value})
        and skip_missing
        and (attempts or skipped)
    ):
        cls = ModelNotAvailableError
        pulls = [f"OLLAMA_HOST={hp} ollama pull {model}  ({name})" for hp, name in pull_targets]
        hint = "pull it first: " + "; ".join(pulls)
    elif not attempts:
        cls = NoBackendAvailableError
    elif cats == {FailoverCategory.CONNECT.value}:
        cls = AllBackendsUnreachableError
    return cls(model, attempts, skipped, exceptions, hint)

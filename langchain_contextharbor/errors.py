"""Typed errors of langchain-contextharbor.

Why a hierarchy of our own: callers of a router need to tell "every backend failed"
(retry later, page someone) from "the stream broke after text was shown" (the caller
must discard or mark the partial answer) from "your configuration is wrong" (fix the
code). Each error carries the structured facts (backends tried, error class, how much
was delivered) so nobody has to parse messages, and chains the original exception.

    ContextHarborError
    ├── ConfigurationError (also ValueError)      bad URL, duplicate backend, bad size ...
    ├── InvalidRequestError (also ValueError)     the request itself is wrong (bad option)
    ├── EmptyResponseError (also ValueError)      the answer had no chunk at all (as ChatOllama)
    ├── TruncatedStreamError                      a stream ended without its done chunk
    ├── StreamInterruptedError                    failure after the first chunk reached you
    ├── DeadlineExceededError (also TimeoutError) Timeouts(total=...) ran out
    ├── AllBackendsFailedError                    every candidate failed; .attempts lists them
    │   ├── AllBackendsUnreachableError           every attempt failed to connect
    │   ├── NoBackendAvailableError               nothing could be tried (circuits open, down)
    │   ├── ModelNotAvailableError                no backend has the model (names the pull)
    │   └── RequestRejectedError                  two servers gave the same error to the same
    │                                             request: the request's fault (also an
    │                                             InvalidRequestError and ResponseError)
    ├── ModelValidationError (also ValueError)    validate_model_on_init found no server for
    │                                             the model; each one raised is also the
    │                                             typed error above a call would raise
    ├── EmbeddingInputError (also TypeError)      embed_documents got something not a str
    └── EmbeddingDigestMismatchError              a server holds another build of the
                                                  embedding model than the index was made with

The two "nothing answered" errors (AllBackendsUnreachableError, NoBackendAvailableError)
are also ``httpx.ConnectError`` and builtin ``ConnectionError``: what a ChatOllama raises
when its server is down, so ``except httpx.ConnectError`` and
``with_retry(retry_if_exception_type=(httpx.ConnectError,))`` keep working. Likewise
ModelNotAvailableError is also the ``ollama.ResponseError`` (404) of a model not pulled.

URLs in messages are always redacted (credentials removed), and so are the objects an
error reaches: every error a call raises has gone through :func:`scrub_exception`, so the
httpx requests (and responses) reachable from it, its ``__cause__``/``__context__`` chain,
``exceptions`` and ``args`` carry ``***`` for every header value but a few plain
protocol headers (an ``Authorization`` or API key the server needed is not kept for
whoever catches, logs or pickles the error).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from ollama import ResponseError

__all__ = [
    "AllBackendsFailedError",
    "AllBackendsUnreachableError",
    "AttemptRecord",
    "ConfigurationError",
    "ContextHarborError",
    "DeadlineExceededError",
    "EmbeddingDigestMismatchError",
    "EmbeddingInputError",
    "EmptyResponseError",
    "InvalidRequestError",
    "ModelNotAvailableError",
    "ModelValidationError",
    "NoBackendAvailableError",
    "RequestRejectedError",
    "SkipRecord",
    "StreamInterruptedError",
    "TruncatedStreamError",
    "scrub_exception",
]

_PLAIN_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "connection",
        "content-length",
        "content-type",
        "host",
        "transfer-encoding",
        "user-agent",
    }
)
"""Request headers an error keeps as sent: what httpx and ollama add themselves. Every
other value (``Authorization``, ``X-API-Key``, any header a user configured; all are held
as secrets) becomes ``***``."""


def scrub_exception(exc: BaseException) -> BaseException:
    """Mask the request headers reachable from ``exc`` and return it.

    Walks ``exc``, its ``__cause__``/``__context__`` chain, the ``exceptions`` of group-like
    errors (ours, ``ExceptionGroup``) and each one's attributes and ``args``; every
    ``httpx.Request`` found is replaced *on the exception* by a masked copy, every
    ``httpx.Response`` by a closed copy whose request is masked. The Request and Response
    objects themselves are not changed: the server got the real headers, and a caller's
    event hook or transport that kept them still sees what was sent; only what hangs off
    the errors a call raises is masked. Idempotent; runs on the failure path only."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        state = getattr(e, "__dict__", None)
        if isinstance(state, dict):
            for name, value in list(state.items()):
                masked = _masked(value)
                if masked is not value:
                    state[name] = masked
                if isinstance(value, (list, tuple)):
                    todo += [x for x in value if isinstance(x, BaseException)]
        if any(isinstance(a, (httpx.Request, httpx.Response)) for a in e.args):
            e.args = tuple(_masked(a) for a in e.args)
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    return exc


def _masked(value: Any) -> Any:
    if isinstance(value, httpx.Request):
        return _masked_request(value)
    if isinstance(value, httpx.Response):
        return _masked_response(value)
    return value


def _masked_request(req: httpx.Request) -> httpx.Request:
    sent = req.headers.multi_items()
    headers = [(k, v if k.lower() in _PLAIN_HEADERS else "***") for k, v in sent]
    if headers == sent and not (req.url.userinfo or req.url.query):
        return req  # nothing secret on it (or masked already)
    url: Any = req.url
    if url.userinfo or url.query:
        from langchain_contextharbor.backends import redact_url

        url = redact_url(str(url))
    return httpx.Request(req.method, url, headers=headers)


def _masked_response(resp: httpx.Response) -> httpx.Response:
    try:
        req = resp.request
    except RuntimeError:  # a response built without a request
        return resp
    masked = _masked_request(req)
    if masked is req:
        return resp
    out = copy.copy(resp)  # httpx's __getstate__: closed, no stream, same body if read
    out.request = masked
    out.history = [_masked_response(r) for r in resp.history]
    if out.next_request is not None:
        out.next_request = _masked_request(out.next_request)
    return out


class ContextHarborError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(ContextHarborError, ValueError):
    """The configuration cannot work (raised at construction, before any I/O)."""


class InvalidRequestError(ContextHarborError, ValueError):
    """The request itself is wrong (an option Ollama does not define, or of the wrong type,
    ``num_ctx <= 0``): raised before anything is sent, naming what was wrong. Why before:
    every server would refuse it alike, and a refusal used to count against each server's
    health, opening circuits that later valid calls then found open."""


class TruncatedStreamError(ContextHarborError):
    """A backend's stream ended cleanly but without Ollama's final ``done: true`` line:
    the answer may be cut short, so it is treated like a broken connection."""

    def __init__(self, backend: str) -> None:
        super().__init__(f"backend {backend!r} ended the stream without its final done chunk")
        self.backend = backend

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.backend,))


class EmptyResponseError(ContextHarborError, ValueError):
    """A backend completed its answer without a single chunk of it (ChatOllama raises
    ``ValueError("No data received from Ollama stream.")`` there; this is one too, with
    the same text). The
    model's answer, not the server's fault: no failover."""

    def __init__(self, backend: str) -> None:
        # ChatOllama's text word for word (code matching it keeps working); the backend
        # is in ``.backend``.
        super().__init__("No data received from Ollama stream.")
        self.backend = backend

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.backend,))


@dataclass(frozen=True)
class AttemptRecord:
    """One try on one backend, as reported in errors and ``response_metadata``."""

    backend: str
    url: str
    category: str
    error_class: str
    message: str
    elapsed_ms: float
    delivered_chunks: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "url": self.url,
            "category": self.category,
            "error_class": self.error_class,
            "message": self.message,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "delivered_chunks": self.delivered_chunks,
        }

    def describe(self) -> str:
        return f"{self.backend} ({self.url}): {self.error_class} [{self.category}]: {self.message}"


@dataclass(frozen=True)
class SkipRecord:
    """A backend that was not tried, and why (circuit open, known down, model missing)."""

    backend: str
    url: str
    reason: str

    def describe(self) -> str:
        return f"{self.backend} ({self.url}): skipped: {self.reason}"


class StreamInterruptedError(ContextHarborError):
    """The serving backend failed after content had already been delivered to the caller.

    Nothing is retried at that point: a retry on another backend would repeat or splice
    tokens. ``delivered_chunks``/``delivered_chars`` say how much the caller already has.
    """

    def __init__(
        self,
        *,
        backend: str,
        url: str,
        delivered_chunks: int,
        delivered_chars: int,
        cause: BaseException | None,
        detail: str | None = None,
    ) -> None:
        """``detail`` replaces ``str(cause)`` in the message (the router passes it with
        credentials removed)."""
        text = str(cause) if detail is None else detail
        super().__init__(
            f"stream from backend {backend!r} ({url}) failed after {delivered_chunks} chunk(s) "
            f"/ {delivered_chars} character(s) were delivered: "
            f"{type(cause).__name__}: {text}"
        )
        self.backend = backend
        self.url = url
        self.delivered_chunks = delivered_chunks
        self.delivered_chars = delivered_chars
        self.__cause__ = cause
        scrub_exception(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_interrupted,
            (self.backend, self.url, self.delivered_chunks, self.delivered_chars, self.__cause__),
        )


def _rebuild_interrupted(
    backend: str, url: str, chunks: int, chars: int, cause: BaseException | None
) -> StreamInterruptedError:
    return StreamInterruptedError(
        backend=backend, url=url, delivered_chunks=chunks, delivered_chars=chars, cause=cause
    )


class DeadlineExceededError(ContextHarborError, TimeoutError):
    """The call's total deadline (``Timeouts(total=...)``) passed; no backend is tried
    after it. ``delivered_chunks`` says how much a stream had already handed over."""

    def __init__(self, model: str, total: float, backend: str | None, delivered_chunks: int = 0):
        where = f" on backend {backend!r}" if backend else ""
        super().__init__(
            f"call for model {model!r} exceeded its total deadline of {total:g} s{where} "
            f"after {delivered_chunks} delivered chunk(s)"
        )
        self.model = model
        self.total = total
        self.backend = backend
        self.delivered_chunks = delivered_chunks

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.model, self.total, self.backend, self.delivered_chunks))


class AllBackendsFailedError(ContextHarborError):
    """Every candidate backend failed (or none could be tried).

    ``attempts`` lists every try in order; ``exceptions`` holds the original exceptions
    in the same order, and the last one is chained as ``__cause__``.
    """

    def __init__(
        self,
        model: str,
        attempts: Sequence[AttemptRecord],
        skipped: Sequence[SkipRecord] = (),
        exceptions: Sequence[BaseException] = (),
        hint: str | None = None,
    ) -> None:
        self.model = model
        self.attempts = list(attempts)
        self.skipped = list(skipped)
        self.exceptions = list(exceptions)
        self.hint = hint
        super().__init__(self._render())
        if self.exceptions:
            self.__cause__ = self.exceptions[-1]
        scrub_exception(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.model, self.attempts, self.skipped, self.exceptions, self.hint))

    def _headline(self) -> str:
        return f"all backends failed for model {self.model!r}"

    def _render(self) -> str:
        lines = [
            f"{self._headline()} ({len(self.attempts)} attempt(s), {len(self.skipped)} skipped)"
        ]
        lines += [f"  - {a.describe()}" for a in self.attempts]
        lines += [f"  - {s.describe()}" for s in self.skipped]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class AllBackendsUnreachableError(AllBackendsFailedError, httpx.ConnectError, ConnectionError):
    """Every attempt failed to connect: also the ``httpx.ConnectError`` (and builtin
    ``ConnectionError``) a ChatOllama raises when its server is down."""

    def _headline(self) -> str:
        return f"no backend reachable for model {self.model!r}"


class NoBackendAvailableError(AllBackendsFailedError, httpx.ConnectError, ConnectionError):
    """No backend could be tried at all: every one is skipped (circuit open, known down).
    Also ``httpx.ConnectError``/``ConnectionError``, like a ChatOllama whose server is down."""

    def _headline(self) -> str:
        return f"no backend available for model {self.model!r}"


class ModelNotAvailableError(AllBackendsFailedError, ResponseError):
    """No backend has the model; the hint names the ``ollama pull`` to run and where.

    Also the ``ollama.ResponseError`` with ``status_code == 404`` a ChatOllama raises for a
    model that is not pulled, so ``except ollama.ResponseError`` keeps working."""

    __str__ = Exception.__str__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error = str(self)
        self.status_code = 404

    def _headline(self) -> str:
        return f"model {self.model!r} is not available on any backend"


class RequestRejectedError(AllBackendsFailedError, InvalidRequestError, ResponseError):
    """Two servers answered the same request with the same error (same status class, same
    text once backend-specific parts are removed): the request's fault, not the servers'.

    No circuit changed for it, and no further server was tried. ``status_code`` and
    ``error`` are the servers' answer (also the ``ollama.ResponseError`` a ChatOllama
    raises for it); ``attempts`` lists the servers that gave it."""

    __str__ = Exception.__str__

    def __init__(
        self,
        model: str,
        attempts: Sequence[AttemptRecord],
        skipped: Sequence[SkipRecord] = (),
        exceptions: Sequence[BaseException] = (),
        hint: str | None = None,
        *,
        status_code: int = 500,
        error: str = "",
    ) -> None:
        self.status_code = status_code
        self.error = error
        super().__init__(model, attempts, skipped, exceptions, hint)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_rejected,
            (
                self.model,
                self.attempts,
                self.skipped,
                self.exceptions,
                self.hint,
                self.status_code,
                self.error,
            ),
        )

    def _headline(self) -> str:
        names = ", ".join(dict.fromkeys(a.backend for a in self.attempts))
        return (
            f"request for model {self.model!r} refused alike by {names} "
            f"(HTTP {self.status_code}: {self.error}): the request's fault, no circuit changed"
        )


def _rebuild_rejected(
    model: str,
    attempts: Sequence[AttemptRecord],
    skipped: Sequence[SkipRecord],
    exceptions: Sequence[BaseException],
    hint: str | None,
    status_code: int,
    error: str,
) -> RequestRejectedError:
    return RequestRejectedError(
        model, attempts, skipped, exceptions, hint, status_code=status_code, error=error
    )


class ModelValidationError(ContextHarborError, ValueError):
    """``validate_model_on_init=True`` found no backend that can serve the model.

    A ``ValueError``, as langchain-ollama's ``validate_model`` raises (for a model not
    pulled and for a server that is down alike), so ``except ValueError`` written for
    ChatOllama catches it. What is raised is always one of the subclasses below, which are
    also the typed error a call would raise then (:class:`ModelNotAvailableError`,
    :class:`AllBackendsUnreachableError`, ...), so code catching those keeps working."""


class _ModelNotAvailableAtInit(ModelNotAvailableError, ModelValidationError):
    """:class:`ModelNotAvailableError` raised by ``validate_model_on_init``."""


class _UnreachableAtInit(AllBackendsUnreachableError, ModelValidationError):
    """:class:`AllBackendsUnreachableError` raised by ``validate_model_on_init``."""


class _NoBackendAtInit(NoBackendAvailableError, ModelValidationError):
    """:class:`NoBackendAvailableError` raised by ``validate_model_on_init``."""


class _AllFailedAtInit(AllBackendsFailedError, ModelValidationError):
    """:class:`AllBackendsFailedError` raised by ``validate_model_on_init``."""


_AT_INIT: dict[type[AllBackendsFailedError], type[AllBackendsFailedError]] = {
    ModelNotAvailableError: _ModelNotAvailableAtInit,
    AllBackendsUnreachableError: _UnreachableAtInit,
    NoBackendAvailableError: _NoBackendAtInit,
    AllBackendsFailedError: _AllFailedAtInit,
}


def at_init(exc: AllBackendsFailedError) -> AllBackendsFailedError:
    """``exc`` as ``validate_model_on_init`` raises it: the same facts, in the subclass of
    its type that is also a :class:`ModelValidationError` (a ``ValueError``)."""
    cls = next((v for k, v in _AT_INIT.items() if type(exc) is k), None)
    if cls is None:
        return exc
    return cls(exc.model, exc.attempts, exc.skipped, exc.exceptions, exc.hint)


class EmbeddingInputError(ContextHarborError, TypeError):
    """``embed_documents``/``embed_query`` got something that is not text (raised before
    any request)."""


class EmbeddingDigestMismatchError(ContextHarborError):
    """A server holds another build (digest) of the embedding model than the one in use.

    An embedding index is only valid for the build that made it: vectors of another build
    lie in another space, so a search mixing them returns wrong documents without any error.
    ``expected`` is the digest in use (the first one this instance embedded with, or the
    ``expected_digest`` it was given); ``found`` maps each refusing backend to its digest.
    ``attempts``/``skipped`` list what else was tried in the same call.
    """

    def __init__(
        self,
        model: str,
        expected: str,
        found: dict[str, str],
        *,
        source: str,
        hint: str,
        attempts: Sequence[AttemptRecord] = (),
        skipped: Sequence[SkipRecord] = (),
    ) -> None:
        self.model = model
        self.expected = expected
        self.found = dict(found)
        self.source = source
        self.hint = hint
        self.attempts = list(attempts)
        self.skipped = list(skipped)
        where = ", ".join(f"{b!r} has {d[:12]}" for b, d in self.found.items())
        lines = [
            f"embedding model {model!r}: {where}, but this index uses build {expected[:12]} "
            f"({source}). Vectors of another build lie in a different space: mixing them "
            "with the index gives wrong search results without any error, so they are refused.",
            f"  fix: {hint}",
        ]
        lines += [f"  - {a.describe()}" for a in self.attempts]
        lines += [f"  - {s.describe()}" for s in self.skipped]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_digest_error,
            (self.model, self.expected, self.found, self.source, self.hint),
        )


def _rebuild_digest_error(
    model: str, expected: str, found: dict[str, str], source: str, hint: str
) -> EmbeddingDigestMismatchError:
    return EmbeddingDigestMismatchError(model, expected, found, source=source, hint=hint)

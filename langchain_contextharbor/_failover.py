"""Failover bookkeeping shared by the chat model and the embeddings.

Why here: what a failed attempt means (record it, classify it once, decide whether the
call moves on, feed the breaker only with what says something about the backend) is one
rule for a chat stream and an embedding batch. The chat model adds what only a stream
has (a commit point after which a failure can no longer fall back, a total deadline,
the warm first-token deadline); an embedding batch is an attempt with none of them.
Everything here works on plain values: the call's :class:`_Call` record, one
:class:`_Try` per attempt, and the :class:`~langchain_contextharbor._admission.Lease`
that records the outcome with the router.

**Whose fault is an error answer?** A server that answers a request with an error body
(Ollama's ``{"error": ...}`` with status 500: ``option "num_ctx" must be of type
integer``, ``invalid format``) may be broken, or the request may be one that every server
refuses. Only another server's answer to the same request can tell, so the rule is:

1. such a failure is recorded at once (stats, attempts, the log) but *without* a verdict on
   the backend: its breaker count is deferred (``_Call.pending``, with the answer's
   :func:`request_signature`: status class and text, backend-specific parts removed);
2. another backend answering the same request successfully, with content, or with a
   *different* error answer proves the deferred ones were the backends' faults: their
   breakers are counted then (:meth:`Lease.succeeded`, :func:`settle_failure`);
3. another backend answering with the *same* signature proves the request's fault: the
   call raises :class:`~langchain_contextharbor.errors.RequestRejectedError` (a
   ``ValueError``, with ``attempts``) at once, and no breaker moves;
4. anything else (no other server answered, the call ran out of time, another server
   refused the request outright with a 400) leaves the deferred counts uncounted: a
   failure is charged to a backend's health only once it is known not to be the request's.

So one bad request never changes how later good requests are routed, and a server that
fails what another serves is still counted against, within the same call.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_contextharbor._transport import ProbeWatch
from langchain_contextharbor.classify import (
    Classification,
    FailoverCategory,
    all_failed_error,
    classify_exception,
)
from langchain_contextharbor.errors import (
    AllBackendsFailedError,
    AttemptRecord,
    DeadlineExceededError,
    RequestRejectedError,
    SkipRecord,
    StreamInterruptedError,
    scrub_exception,
)

if TYPE_CHECKING:
    from langchain_contextharbor._admission import Deferred, Lease
    from langchain_contextharbor.backends import BackendConfig
    from langchain_contextharbor.routing import RoutePlan

__all__ = [
    "METADATA_KEY",
    "Handled",
    "Pending",
    "all_failed",
    "metadata",
    "no_verdict",
    "request_signature",
    "settle_failure",
]

logger = logging.getLogger("langchain_contextharbor")

METADATA_KEY = "contextharbor"

Handled = tuple["type[BaseException] | FailoverCategory", ...] | None
"""``exceptions_to_handle``: fail over only on these types or categories (None: the
classifier's own decision)."""


class _Call:
    """Book-keeping of one routed call: its plan, attempts, skips and the exceptions behind
    them, and the attempts abandoned after their tokens reached observers (chat)."""

    __slots__ = (
        "abandoned",
        "attempts",
        "exceptions",
        "model",
        "num_ctx",
        "pending",
        "plan",
        "skipped",
        "started",
    )

    plan: RoutePlan
    """The plan of the current round (set by the caller, re-set by each re-planning)."""

    def __init__(self, model: str, num_ctx: int, plan: RoutePlan | None = None) -> None:
        self.started = time.monotonic()
        self.abandoned: list[dict[str, Any]] = []
        self.model = model
        self.num_ctx = num_ctx
        self.attempts: list[AttemptRecord] = []
        self.exceptions: list[BaseException] = []
        self.pending: list[Deferred] = []
        """Error answers whose breaker count waits for another backend's answer (see the
        module docstring)."""
        if plan is None:  # planned later, per batch (embeddings)
            self.skipped: list[SkipRecord] = []
        else:
            self.plan = plan
            self.skipped = list(plan.skipped)


class _Try:
    """The plain facts of one attempt that the failure decision reads.

    ``timed``: the chat model's limits apply, the call's total deadline
    (``Timeouts.total``) and the lease's warm first-token deadline; an embedding batch
    has neither. ``delivered``/``chars``/``committed`` are what reached the caller (a
    stream's commit point; never set for a batch)."""

    __slots__ = (
        "call",
        "cfg",
        "chars",
        "committed",
        "deadline",
        "delivered",
        "first_token",
        "lease",
        "started",
    )

    def __init__(self, call: _Call, lease: Lease, timed: bool) -> None:
        self.call = call
        self.lease = lease
        self.cfg = cfg = lease.cfg
        self.started = time.perf_counter()
        self.delivered = 0
        self.chars = 0
        self.committed = False
        if timed:
            total = cfg.timeouts.total
            self.deadline = None if total is None else call.started + total
            """``time.monotonic()`` by which this call must end (``Timeouts.total``)."""
            self.first_token = lease.first_token
            """A short first-token deadline when no model load is coming, else None."""
        else:
            self.deadline = None
            self.first_token = None

    def check_deadline(self) -> None:
        """Raise DeadlineExceededError when the call's total time is spent."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise self.deadline_error()

    def deadline_error(self) -> DeadlineExceededError:
        total = self.cfg.timeouts.total or 0.0
        return DeadlineExceededError(self.call.model, total, self.cfg.name, self.delivered)


class Pending:
    """A failure recorded without a verdict whose breaker count waits (module docstring):
    the backend, its classification and the answer's :func:`request_signature`."""

    __slots__ = ("backend", "signature", "verdict")

    def __init__(self, backend: str, verdict: Classification, signature: tuple[int, str]):
        self.backend = backend
        self.verdict = verdict
        self.signature = signature


_ADDRESS = re.compile(r"(?:\[[0-9a-fA-F:]+\]|\b(?:\d{1,3}\.){3}\d{1,3}|\blocalhost)(?::\d+)?")


def request_signature(
    exc: BaseException, c: Classification, cfg: BackendConfig
) -> tuple[int, str] | None:
    """What two servers' error answers to one request must share to be the request's fault:
    the status class and the error text with this backend's URL, ``host:port``, addresses
    and credentials removed. None for every failure that is not Ollama's own error answer
    (refused, hung, cut, an HTML page, out of memory, busy, 404, and the statuses Ollama
    never sends itself: a proxy's 401/403/429 or 502/504, whose gateway could not reach
    its server): those say something about the backend, never about the request. Ollama
    answers a request it cannot serve with 500 (``handleScheduleError``)."""
    status = c.status_code
    if c.category is not FailoverCategory.SERVER_ERROR or status != 500:
        return None
    text = getattr(exc, "error", None)
    if not isinstance(text, str):
        return None
    text = cfg.scrub(text)
    for part in (cfg.safe_url, cfg.hostport):
        text = text.replace(part, "<backend>")
    return status // 100, " ".join(_ADDRESS.sub("<address>", text).split())


def _blame_pending(call: _Call, lease: Lease) -> None:
    """Another backend answered differently: the deferred failures were their backends'.
    Those of the backend answering now (a retry round) are kept: a server that repeats
    itself proves nothing either way."""
    kept = []
    for p in call.pending:
        if p.backend == lease.name:
            kept.append(p)
        else:
            lease.router.count_failure(p.backend, p.verdict)
    call.pending[:] = kept


def no_verdict(c: Classification) -> Classification:
    """A fatal error says nothing about the backend's health: don't feed the breaker."""
    return Classification(c.category, False, False, c.status_code)


def should_failover(exc: BaseException, c: Classification, handled: Handled) -> bool:
    """The classifier's decision, or ``exceptions_to_handle``'s when one is given."""
    if handled is None:
        return c.failover
    types = tuple(h for h in handled if isinstance(h, type))
    cats = {h for h in handled if isinstance(h, FailoverCategory)}
    return (bool(types) and isinstance(exc, types)) or c.category in cats


def on_failure(
    call: _Call, cfg: BackendConfig, exc: Exception, started: float, delivered: int
) -> Classification:
    """Classify a failed attempt and add it to the call's record (scrubbed, logged)."""
    c = classify_exception(exc)
    msg = cfg.scrub(str(exc) or type(exc).__name__)
    call.attempts.append(
        AttemptRecord(
            cfg.name,
            cfg.safe_url,
            c.category.value,
            type(exc).__name__,
            msg,
            (time.perf_counter() - started) * 1000,
            delivered,
        )
    )
    call.exceptions.append(scrub_exception(exc))  # raised as it is, or chained: masked
    logger.warning(
        "backend %s failed for %s: %s: %s", cfg.name, call.model, type(exc).__name__, msg
    )
    return c


def settle_failure(att: _Try, exc: Exception, handled: Handled) -> bool:
    """Record a failed attempt and decide: True = try the next backend, False = the
    caller re-raises ``exc`` as it is. A spent total deadline raises
    DeadlineExceededError; a failure after the commit point raises
    StreamInterruptedError (the caller already has part of this backend's answer)."""
    call, cfg, lease = att.call, att.cfg, att.lease
    if att.deadline is not None and not isinstance(exc, DeadlineExceededError):
        if time.monotonic() >= att.deadline - 0.005:  # a phase timeout capped by it
            cause, exc = exc, att.deadline_error()
            exc.__cause__ = cause
    verdict = on_failure(call, cfg, exc, att.started, att.delivered)
    if att.first_token is not None and verdict.category is FailoverCategory.TIMEOUT:
        if call.attempts and not att.delivered:  # say which deadline ran out
            last = call.attempts[-1]
            if type(att.first_token) is ProbeWatch:  # its own message names the probe deadline
                note = last.message
            else:
                note = (
                    f"{last.message} (warm first-token deadline {att.first_token:.1f}s: "
                    f"{lease.note})"
                )
            call.attempts[-1] = dataclasses.replace(last, message=note)
    text = cfg.scrub(str(exc))
    if isinstance(exc, DeadlineExceededError):
        call.pending.clear()  # nobody else answered: the deferred counts stay uncounted
        lease.failed(no_verdict(verdict), text, fell_back=False)
        raise exc
    if att.committed:
        if call.pending:  # this backend streamed content: the deferred ones were at fault
            _blame_pending(call, lease)
        lease.failed(verdict, text, fell_back=False, interrupted=True)
        raise StreamInterruptedError(
            backend=cfg.name,
            url=cfg.safe_url,
            delivered_chunks=att.delivered,
            delivered_chars=att.chars,
            cause=exc,
            detail=text,
        ) from exc
    if not should_failover(exc, verdict, handled):
        call.pending.clear()  # a refusal of the request itself: nothing proven against them
        lease.failed(no_verdict(verdict), text, fell_back=False)
        return False
    sig = request_signature(exc, verdict, cfg) if verdict.counts_against_backend else None
    if sig is None:
        lease.failed(verdict, text, fell_back=True)
        return True
    if any(p.signature == sig and p.backend != cfg.name for p in call.pending):
        # Two servers refused this request alike: the request's fault, no breaker moves.
        call.pending.clear()
        lease.failed(no_verdict(verdict), text, fell_back=False)
        raise RequestRejectedError(
            call.model,
            call.attempts,
            call.skipped,
            call.exceptions,
            "fix the request (its options, format or messages); retrying it will not help",
            status_code=verdict.status_code or 500,
            error=cfg.scrub(str(getattr(exc, "error", text))),
        ) from exc
    if call.pending:  # a different error answer: the earlier ones were their backends'
        _blame_pending(call, lease)
    lease.failed(no_verdict(verdict), text, fell_back=True)
    call.pending.append(Pending(cfg.name, verdict, sig))
    return True


def metadata(call: _Call, cfg: BackendConfig, reasons: Sequence[str]) -> dict[str, Any]:
    """The routing facts a chat answer carries in ``response_metadata``."""
    plan = call.plan
    return {
        "backend": cfg.name,
        METADATA_KEY: {
            "backend": cfg.name,
            "kind": cfg.kind,
            "base_url": cfg.safe_url,
            "model": call.model,
            "fallback": bool(call.attempts)
            or bool(plan.passed_over)
            or plan.backend_names[0] != cfg.name,
            "attempts": [a.as_dict() for a in call.attempts] if call.attempts else [],
            "reason": "; ".join(reasons),
            "route": plan.backends,
            "route_summary": plan.summary,
            "skipped": [{"backend": s.backend, "reason": s.reason} for s in call.skipped]
            if call.skipped
            else [],
            "abandoned": list(call.abandoned),
        },
    }


def all_failed(call: _Call, configs: Sequence[BackendConfig]) -> AllBackendsFailedError:
    """The typed error of a call whose every candidate failed or was skipped."""
    return all_failed_error(
        call.model,
        call.attempts,
        call.skipped,
        call.exceptions,
        [(c.hostport, c.name) for c in configs],
    )

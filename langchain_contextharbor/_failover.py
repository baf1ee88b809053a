"""Failover bookkeeping shared by the chat model and the embeddings.

Why here: what a failed attempt means (record it, classify it once, decide whether the
call moves on, feed the breaker only with what says something about the backend) is one
rule for a chat stream and an embedding batch. The chat model adds what only a stream
has (a commit point after which a failure can no longer fall back, a total deadline,
the warm first-token deadline); an embedding batch is an attempt with none of them.
Everything here works on plain values: the call's :class:`_Call` record, one
:class:`_Try` per attempt, and the :class:`~langchain_contextharbor._admission.Lease`
that records the outcome with the router.
"""

from __future__ import annotations

import dataclasses
import logging
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
    SkipRecord,
    StreamInterruptedError,
    scrub_exception,
)

if TYPE_CHECKING:
    from langchain_contextharbor._admission import Lease
    from langchain_contextharbor.backends import BackendConfig
    from langchain_contextharbor.routing import RoutePlan

__all__ = ["METADATA_KEY", "Handled", "all_failed", "metadata", "no_verdict", "settle_failure"]

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
        lease.failed(no_verdict(verdict), text, fell_back=False)
        raise exc
    if att.committed:
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
        lease.failed(no_verdict(verdict), text, fell_back=False)
        return False
    lease.failed(verdict, text, fell_back=True)
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
            "fallback": bool(call.attempts),
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

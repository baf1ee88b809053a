"""Fleet mode: what the router knows, shared by many processes through one store.

Why: a web app under gunicorn/uvicorn runs several workers, each with its own
``HybridChatOllama``. Alone, each worker counts only its own calls in flight, rediscovers a
dead server with a failed call of its own and probes every server every TTL. With a shared
state the workers pool five things: calls in flight per backend (as expiring leases, so a
dead worker leaves no phantom load), circuit-breaker state (one worker's failure opens the
circuit for all; one trial call for all), learned 404 / out-of-memory marks, probe results
(one probe per backend per TTL for the whole fleet) and learned speeds (a new worker
starts with what the others measured).

Decisions stay local: the router still plans with the pure
:func:`~langchain_contextharbor.routing.plan_route`; the shared state only feeds the
snapshots it plans over. This module holds the hook interface the router calls
(:class:`SharedState`) and the plain values it exchanges, and imports no implementation:
the Redis one (:mod:`langchain_contextharbor._fleet_redis`) is built by
:func:`~langchain_contextharbor._fleet_setup.make_shared_state` only when asked (still
importable from here), so ``redis`` is never imported otherwise.

Every hook is best effort: a store that is down or slow never fails a call; the router
then decides on its local state alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from langchain_contextharbor._facts import ProbeResult
    from langchain_contextharbor.routing import SpeedEstimate

__all__ = [
    "REDIS_URL_ENV",
    "SharedBackend",
    "SharedBreaker",
    "SharedState",
    "make_shared_state",  # noqa: F822 - resolved by __getattr__ below (lives in _fleet_setup)
]

REDIS_URL_ENV = "CONTEXTHARBOR_REDIS_URL"

MarkKind = Literal["missing", "oom"]


@dataclass(frozen=True)
class SharedBreaker:
    """A backend's circuit as the fleet sees it (times on the router's clock)."""

    state: Literal["closed", "open", "half_open"]
    failures: int = 0
    opened_at: float | None = None
    cooldown: float = 0.0
    trial_busy: bool = False
    """Some worker holds the fleet's one trial call right now."""


@dataclass(frozen=True)
class SharedBackend:
    """What the fleet knows about one backend (times on the router's clock)."""

    in_flight: int
    """Calls in flight on this backend across the fleet (this worker's included)."""
    breaker: SharedBreaker | None = None
    """None: nothing shared (closed as far as the fleet knows)."""
    missing: Mapping[str, float] = field(default_factory=dict)
    """normalized model -> until (learned 404)"""
    oom: Mapping[str, tuple[int, float, str]] = field(default_factory=dict)
    """normalized model -> (num_ctx, until, message) (learned out-of-memory)"""


ProbeDecision = tuple[Literal["probe", "adopt", "skip"], "ProbeResult | None"]
"""``("probe", None)``: this worker probes and publishes; ``("adopt", result)``: use the
fleet's fresh result; ``("skip", result_or_None)``: another worker is probing right now."""


@runtime_checkable
class SharedState(Protocol):
    """The hooks a :class:`~langchain_contextharbor._router.Router` calls in fleet mode.

    ``now`` arguments and times in returned values are on the router's clock; an
    implementation converts to whatever clock its store shares. Every method returns
    quickly and never raises: on trouble it answers ``None`` ("no shared knowledge, decide
    locally") and recovers by itself.
    """

    def view(self, now: float) -> Mapping[str, SharedBackend] | None:
        """The fleet's state of every backend, or None when unavailable.

        What expires (a trial whose holder died, a lease, a mark, a faded circuit) is gone
        from the view once ``now`` passes its expiry, whether or not anything else changed
        since: a view cached until the next change would keep a dead worker's trial busy
        for good, and the fleet would never use that backend again."""
        ...

    def acquire(
        self,
        backend: str,
        now: float,
        *,
        trial: bool,
        spill_to: Sequence[str] = (),
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> bool | None:
        """Count a call in flight on ``backend``, atomically with two checks: with
        ``trial`` the call is the breaker's trial call, granted to one worker fleet-wide;
        without it, when ``backend`` has no free slot fleet-wide and one of ``spill_to``
        (the plan's next candidates) is expected to finish the call sooner on fresh counts,
        False sends the call on (spill-over as the plan would decide it now). ``costs``:
        per backend, (expected seconds with a free slot, seconds added per call queued
        ahead per slot), from the plan's estimate; unknown backends count queue depth per
        slot. None: store unavailable (the local decision stands)."""
        ...

    def release(self, backend: str, now: float) -> None:
        """The call counted by :meth:`acquire` ended (also frees a trial it held). A
        release the store cannot take now is kept and delivered once it can: a lost
        release counts as load until its lease expires."""
        ...

    def publish_breaker(self, backend: str, breaker: SharedBreaker, now: float) -> None:
        """This worker's breaker of ``backend`` changed state (opened, re-opened, closed)."""
        ...

    def publish_mark(
        self,
        backend: str,
        kind: MarkKind,
        model: str,
        until: float,
        now: float,
        num_ctx: int = 0,
        message: str = "",
    ) -> None:
        """A learned 404 (``missing``) or out-of-memory (``oom``) mark."""
        ...

    def probe_decision(self, backend: str, now: float, ttl: float) -> ProbeDecision:
        """Whether this worker should probe ``backend`` now (and claim it fleet-wide)."""
        ...

    def publish_probe(self, backend: str, result: ProbeResult, now: float, ttl: float) -> None:
        """Share a probe result this worker obtained."""
        ...

    def sync_speeds(
        self, mine: Mapping[tuple[str, str], SpeedEstimate], now: float
    ) -> Mapping[tuple[str, str], SpeedEstimate] | None:
        """Publish this worker's learned speeds ((backend, model) -> estimate) and return
        the fleet's (the latest published per key), or None when unavailable."""
        ...

    def describe(self) -> dict[str, Any]:
        """Mode and connection state for ``stats()`` (credentials never included)."""
        ...

    def close(self) -> None: ...


class LocalState:
    """The no-op shared state: every worker on its own (the default).

    The router treats ``shared_state=None`` the same way and skips the hooks entirely; this
    class exists for callers that want an explicit object (and documents the contract)."""

    def view(self, now: float) -> Mapping[str, SharedBackend] | None:
        return None

    def acquire(
        self,
        backend: str,
        now: float,
        *,
        trial: bool,
        spill_to: Sequence[str] = (),
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> bool | None:
        return None

    def release(self, backend: str, now: float) -> None:
        return None

    def publish_breaker(self, backend: str, breaker: SharedBreaker, now: float) -> None:
        return None

    def publish_mark(
        self,
        backend: str,
        kind: MarkKind,
        model: str,
        until: float,
        now: float,
        num_ctx: int = 0,
        message: str = "",
    ) -> None:
        return None

    def probe_decision(self, backend: str, now: float, ttl: float) -> ProbeDecision:
        return ("probe", None)

    def publish_probe(self, backend: str, result: ProbeResult, now: float, ttl: float) -> None:
        return None

    def sync_speeds(
        self, mine: Mapping[tuple[str, str], SpeedEstimate], now: float
    ) -> Mapping[tuple[str, str], SpeedEstimate] | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"mode": "local"}

    def close(self) -> None:
        return None


def __getattr__(name: str) -> Any:
    """``fleet.make_shared_state`` stays importable from here, where callers found it.

    The factory lives in :mod:`langchain_contextharbor._fleet_setup`: it chooses and builds
    an implementation (the Redis store), and a protocol module that imported its own
    implementation would be a loop (``_fleet_redis`` imports this module). Resolved on
    first access, so importing this module imports neither."""
    if name == "make_shared_state":
        from langchain_contextharbor._fleet_setup import make_shared_state

        return make_shared_state
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

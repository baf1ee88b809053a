"""A per-backend circuit breaker as a small, pure state machine.

Why pure: a breaker is about time, and tests of time must not sleep. Every method takes
``now`` (seconds from any monotonic clock) and nothing here reads a clock or a lock —
the router owns both. States:

* ``closed`` — calls flow; consecutive counted failures accumulate.
* ``open`` — ``failure_threshold`` consecutive failures happened; calls skip this backend
  (and pay nothing for it) until ``opened_at + cooldown``.
* ``half_open`` — the cooldown passed; exactly one trial call is let through. Success
  closes the circuit, failure re-opens it with the cooldown multiplied by ``backoff``
  (capped at ``max_cooldown``).

Evidence beats the timer: a successful health probe of an open backend
(:meth:`CircuitBreaker.probe_succeeded`) moves it to ``half_open`` at once, so the next call
is its trial instead of waiting out the cooldown. To keep a server whose probes answer but
whose generation hangs from turning every probe into a trial, the shortcut is taken once per
open period, and again only after a probe has seen the server down in between (it went
away and came back). :meth:`CircuitBreaker.reset` forgets everything (the operator said so).

::

    closed --failures >= threshold--> open --cooldown over / probe ok--> half_open
       ^                                ^                                  |
       |                                +-------- trial failed (backoff) --+
       +---------------------------------------- trial succeeded ----------+
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["BreakerPolicy", "CircuitBreaker", "CircuitRecord", "CircuitState"]

CircuitState = Literal["closed", "open", "half_open"]


class CircuitRecord(Protocol):
    """A circuit as another holder of the same backend recorded it: what
    :meth:`CircuitBreaker.adopt_shared` reads. Declared here, by the reader, so that this
    pure module depends on nothing above it; any value with these fields fits (the shared
    state's record of a circuit is one)."""

    @property
    def state(self) -> CircuitState: ...

    @property
    def failures(self) -> int: ...

    @property
    def opened_at(self) -> float | None: ...

    @property
    def cooldown(self) -> float: ...


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 1
    """Consecutive counted failures that open the circuit. 1: a dead or hung server is
    paid for once, then skipped until its trial call."""
    cooldown: float = 15.0
    """Seconds an opened circuit stays open before the trial call."""
    backoff: float = 2.0
    """Cooldown multiplier after a failed trial call."""
    max_cooldown: float = 300.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        for name in ("cooldown", "backoff", "max_cooldown"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.backoff < 1:
            raise ValueError(
                f"backoff must be >= 1 (a failed trial never shortens the wait), "
                f"got {self.backoff!r}"
            )
        if self.cooldown > self.max_cooldown:
            raise ValueError(
                f"cooldown ({self.cooldown}) must not exceed max_cooldown ({self.max_cooldown})"
            )


class CircuitBreaker:
    """State of one backend's circuit. Not thread-safe by itself: the router locks."""

    __slots__ = (
        "_cooldown",
        "_down_seen",
        "_shortcut_used",
        "_trial_in_flight",
        "failures",
        "opened_at",
        "policy",
        "state",
    )

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self.state: CircuitState = "closed"
        self.failures = 0
        self.opened_at: float | None = None
        self._cooldown = self.policy.cooldown
        self._trial_in_flight = False
        self._shortcut_used = False
        self._down_seen = False

    @property
    def cooldown(self) -> float:
        return self._cooldown

    @property
    def is_clean(self) -> bool:
        """Closed, no failure counted, no trial pending: a success changes nothing."""
        return self.state == "closed" and not self.failures and not self._trial_in_flight

    def retry_at(self) -> float | None:
        """When an open circuit lets its trial call through (None unless open)."""
        if self.state != "open" or self.opened_at is None:
            return None
        return self.opened_at + self._cooldown

    def would_allow(self, now: float) -> bool:
        """Whether a call may be tried now, without changing state (for planning)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            at = self.retry_at()
            return at is not None and now >= at
        return not self._trial_in_flight

    def acquire(self, now: float) -> bool:
        """Ask to send a call now; moves open→half_open and reserves the trial call."""
        if self.state == "closed":
            return True
        if self.state == "open":
            at = self.retry_at()
            if at is None or now < at:
                return False
            self.state = "half_open"
            self._trial_in_flight = True
            return True
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self.opened_at = None
        self._cooldown = self.policy.cooldown
        self._trial_in_flight = False
        self._shortcut_used = False
        self._down_seen = False

    def reset(self) -> None:
        """Forget every failure: closed, no backoff (e.g. ``HybridChatOllama.reset()``)."""
        self.record_success()

    def probe_failed(self) -> None:
        """A health probe found the server down (remembered for :meth:`probe_succeeded`)."""
        if self.state != "closed":
            self._down_seen = True

    def probe_succeeded(self) -> bool:
        """A health probe found the server up. An open circuit becomes half-open now (its
        trial call is the next call) unless this shortcut was already taken in this outage
        and no probe has seen the server down since. Returns whether the state changed."""
        if self.state != "open" or (self._shortcut_used and not self._down_seen):
            return False
        self.state = "half_open"
        self._trial_in_flight = False
        self._shortcut_used = True
        self._down_seen = False
        return True

    def record_failure(self, now: float) -> None:
        """A counted failure (the classifier said it counts against the backend)."""
        self.failures += 1
        if self.state == "half_open":
            self._cooldown = min(self._cooldown * self.policy.backoff, self.policy.max_cooldown)
            self._open(now)
        elif self.state == "closed" and self.failures >= self.policy.failure_threshold:
            self._shortcut_used = False
            self._down_seen = False
            self._open(now)

    def release(self) -> None:
        """The call ended without a verdict on the backend (e.g. 400, cancelled)."""
        self._trial_in_flight = False
        if self.state == "half_open":
            # No verdict: keep it half-open so the next call becomes the trial.
            pass

    def adopt_shared(
        self, shared: CircuitRecord | None, now: float, seen: CircuitRecord | None = None
    ) -> bool:
        """Take on what the fleet learned (fleet mode); True when this breaker changed.

        ``shared`` is the fleet's circuit now, ``seen`` the one the previous view showed.
        An open circuit published by another worker (opened later than ours) opens this
        one with the same time and cooldown. A fleet circuit that was open and is gone now
        (another worker's trial call succeeded) closes ours if ours is no newer; the mere
        absence of a record closes nothing (our own opening may not be published yet). A
        trial call this worker holds is never overridden."""
        tol = 1e-3  # the same instant, converted between clocks twice
        if self._trial_in_flight:
            return False
        if shared is None or shared.state == "closed":
            if self.state == "closed" or seen is None or seen.opened_at is None:
                return False
            if self.opened_at is not None and self.opened_at > seen.opened_at + tol:
                return False
            self.record_success()
            return True
        if shared.state == "open" and shared.opened_at is not None:
            if self.state == "open" and (self.opened_at or 0.0) >= shared.opened_at - tol:
                return False
            if self.state == "half_open" and (self.opened_at or 0.0) >= shared.opened_at - tol:
                return False
            self.state = "open"
            self.opened_at = shared.opened_at
            self.failures = max(self.failures, shared.failures)
            self._cooldown = min(max(shared.cooldown, 0.0), self.policy.max_cooldown)
            return True
        return False

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self._trial_in_flight = False

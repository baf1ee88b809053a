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

Slow to accept is not dead (the overload rule). Under a rush of calls a healthy server's
accept queue fills and new connections time out in the handshake, while the calls it
accepted keep succeeding; with ``failure_threshold=1`` one such timeout would open the
circuit and send every call elsewhere (or fail it fast) while the server is up. So a
counted failure the router marks ``slow_accept`` (a connect timeout: not a refused or
reset connection, not a stall after accepting) is *forgiven*, not counted toward
``failure_threshold``, when all of these hold:

1. the circuit is closed (a trial call is judged on its outcome, whatever it is);
2. the last probe did not find the server down;
3. the server answered (a call succeeded or a probe answered) within ``overload_window``
   seconds before ``now``;
4. the run of forgiven connect timeouts since the last successful call began less than
   ``overload_window`` seconds ago.

Otherwise it counts like any other failure. A rush therefore costs the circuit nothing; a
server that really stopped accepting opens within ``overload_window`` seconds of its first
connect timeout (at once when a probe has seen it down, or when it has been silent for that
long). A successful call ends the run. ``overload_window=0`` turns the rule off.

Evidence beats an open circuit too: a call that finds *every* backend's circuit closed off
may still try one whose probe answered after the last failure counted there
(:meth:`CircuitBreaker.admits_on_evidence`; the router checks "every"), rather than fail
fast while a probe says a server is up.

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
    overload_window: float = 10.0
    """Seconds of the overload rule (module docstring): how recent a sign of life must be
    for a connect timeout to be forgiven, and how long a run of forgiven connect timeouts
    may last before they count. 0: every connect timeout counts."""

    def __post_init__(self) -> None:
        """Errors are :class:`~langchain_contextharbor.errors.ConfigurationError` (a
        ``ValueError``), like every other setting of the package. Imported here, when a
        policy is built: this pure module imports nothing of the package at import time."""
        from langchain_contextharbor.errors import ConfigurationError

        t = self.failure_threshold
        if not isinstance(t, int) or isinstance(t, bool) or t < 1:
            raise ConfigurationError(f"failure_threshold must be an integer >= 1, got {t!r}")
        for name in ("cooldown", "backoff", "max_cooldown", "overload_window"):
            v = getattr(self, name)
            if not (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v >= 0
            ):
                raise ConfigurationError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.backoff < 1:
            raise ConfigurationError(
                f"backoff must be >= 1 (a failed trial never shortens the wait), "
                f"got {self.backoff!r}"
            )
        if self.cooldown > self.max_cooldown:
            raise ConfigurationError(
                f"cooldown ({self.cooldown}) must not exceed max_cooldown ({self.max_cooldown})"
            )


class CircuitBreaker:
    """State of one backend's circuit. Not thread-safe by itself: the router locks."""

    __slots__ = (
        "_cooldown",
        "_down_seen",
        "_failed_at",
        "_shortcut_used",
        "_slow_since",
        "_trial_in_flight",
        "failures",
        "opened_at",
        "policy",
        "slow_accepts",
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
        self._failed_at: float | None = None
        """When the last counted failure happened (for :meth:`admits_on_evidence`)."""
        self._slow_since: float | None = None
        """When the current run of forgiven connect timeouts began (None: no run)."""
        self.slow_accepts = 0
        """Connect timeouts forgiven since the last successful call (the overload rule)."""

    @property
    def cooldown(self) -> float:
        return self._cooldown

    @property
    def is_clean(self) -> bool:
        """Closed, no failure counted or forgiven, no trial pending: a success changes
        nothing."""
        return (
            self.state == "closed"
            and not self.failures
            and not self._trial_in_flight
            and self._slow_since is None
        )

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
        self._failed_at = None
        self._slow_since = None
        self.slow_accepts = 0

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

    def record_failure(
        self,
        now: float,
        *,
        slow_accept: bool = False,
        answered_at: float | None = None,
        probe_down: bool = False,
    ) -> None:
        """A counted failure (the classifier said it counts against the backend).

        The evidence for the overload rule (module docstring), given by the router:
        ``slow_accept``: the failure was a connect timeout; ``answered_at``: when the
        server last answered (a successful call or probe; None: never seen); ``probe_down``:
        its last probe found it down. A forgiven failure changes nothing but the run."""
        if slow_accept and self.state == "closed" and self._forgives(now, answered_at, probe_down):
            if self._slow_since is None:
                self._slow_since = now
            self.slow_accepts += 1
            return
        self.failures += 1
        self._failed_at = now
        if self.state == "half_open":
            self._cooldown = min(self._cooldown * self.policy.backoff, self.policy.max_cooldown)
            self._open(now)
        elif self.state == "closed" and self.failures >= self.policy.failure_threshold:
            self._shortcut_used = False
            self._down_seen = False
            self._open(now)

    def _forgives(self, now: float, answered_at: float | None, probe_down: bool) -> bool:
        """Rules 2-4 of the overload rule (rule 1, a closed circuit, is the caller's)."""
        window = self.policy.overload_window
        if window <= 0 or probe_down or answered_at is None or now - answered_at > window:
            return False
        return self._slow_since is None or now - self._slow_since < window

    def admits_on_evidence(self, probe_ok_at: float | None) -> bool:
        """Whether a call that finds every backend's circuit closed off may try this one
        anyway: its circuit is not closed and a probe answered (at ``probe_ok_at``) after
        the last failure counted here. Why: failing fast while a probe says the server is
        up loses calls the server would answer; a call so admitted that fails counts as a
        failure, so the next such call needs a newer answering probe (one wave of calls
        per probe at most, when the server answers probes but not calls). The state does
        not change: a success closes the circuit, as any success does."""
        if self.state == "closed" or probe_ok_at is None:
            return False
        last = self._failed_at if self._failed_at is not None else self.opened_at
        return last is not None and probe_ok_at > last

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
        self._slow_since = None

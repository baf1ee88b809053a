"""The router's backend table: one row of mutable state per backend, under one lock.

Why a module of its own: the router's parts (planning and admission in
:mod:`~langchain_contextharbor._router`, probes in :mod:`~langchain_contextharbor._prober`,
trials and calibration in :mod:`~langchain_contextharbor._background`) all read and write
the same rows, and each must be able to name the table without importing the others
(no import loop). :class:`BackendTable` is that shared state: the rows, the lock, the
version that plans are cached under, the learned speeds, the settings, and the fleet
hooks. :class:`~langchain_contextharbor._router.Router` *is* a table (it subclasses it, so
its hot path reads its own attributes); the prober and the background worker are handed
the same object.

Locking: every write to a row, to ``speeds`` or to ``_version`` happens under ``_lock``
(an RLock). Fleet hooks that may do I/O are called outside it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_contextharbor._facts import DECAY, BackendFacts, ProbeResult, learn_speed, service_s
from langchain_contextharbor._settings import RouterSettings
from langchain_contextharbor._stats import BackendStats
from langchain_contextharbor._transport import EVIDENCE_MARGIN, ProbeWatch
from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.breaker import CircuitBreaker
from langchain_contextharbor.fleet import SharedBackend, SharedBreaker, SharedState
from langchain_contextharbor.routing import SpeedEstimate
from langchain_contextharbor.sizing import ArchInfo, normalize_model_name

__all__ = ["BackendRuntime", "BackendTable", "Clock"]

Clock = Callable[[], float]


@dataclass
class BackendRuntime:
    """One row of the table: what the router knows and counts about one backend."""

    config: BackendConfig
    index: int
    breaker: CircuitBreaker
    in_flight: int = 0
    probe: ProbeResult | None = None
    probe_future: concurrent.futures.Future[ProbeResult] | None = None
    """The probe running now (at most one per backend), shared by every waiter."""
    health_future: concurrent.futures.Future[str | None] | None = None
    """The running probe's health verdict, set as soon as ``/api/version`` has answered (or
    not): None = up, else why it is down. What a call with no evidence yet waits on."""
    probe_started: float = 0.0
    """``time.perf_counter()`` when the running (or last) probe started."""
    shows: dict[str, tuple[float, ArchInfo | None]] = field(default_factory=dict)
    show_futures: dict[str, concurrent.futures.Future[ArchInfo | None]] = field(
        default_factory=dict
    )
    missing: dict[str, float] = field(default_factory=dict)
    """normalized model -> until (learned 404)"""
    oom: dict[str, tuple[int, float, str]] = field(default_factory=dict)
    """normalized model -> (num_ctx, until, message) (learned out-of-memory)"""
    stats: BackendStats = field(default_factory=BackendStats)
    answered_at: float | None = None
    """Clock time of the last successful call or probe (the server was answering)."""
    warm: dict[str, float] = field(default_factory=dict)
    """normalized model -> clock time of its last successful call here (so it is loaded)."""
    publish: SharedBreaker | None = None
    """A breaker change to hand to the fleet once the router's lock is released."""
    fleet: SharedBackend | None = None
    """The fleet's view of this backend (fleet mode, shared store reachable), else None."""
    calibrations: int = 0
    """Speed calibration requests sent here (not user calls: not in ``stats.requests``)."""
    calibration_failures: int = 0

    @property
    def load(self) -> int:
        """Calls in flight as planning sees them: fleet-wide in fleet mode, else local."""
        f = self.fleet
        return self.in_flight if f is None else max(f.in_flight, self.in_flight)


class BackendTable:
    """The rows, the lock, the plan version, learned speeds and settings (see module doc),
    and what is read or learned from the rows alone: a call's first-token deadline, a
    speed learned from a call's timings, the facts a plan is built from."""

    def __init__(
        self,
        backends: Sequence[BackendConfig],
        settings: RouterSettings,
        *,
        clock: Clock = time.monotonic,
        shared_state: SharedState | None = None,
    ) -> None:
        s = self.settings = settings
        self.clock = clock
        # Settings read on the hot path, as plain attributes (one lookup, not two).
        self.probe_ttl = s.probe_ttl
        self.show_ttl = s.show_ttl
        self.oom_cooldown = s.oom_cooldown
        self.missing_ttl = s.missing_ttl
        self.background_probes = s.background_probes
        self.first_probe_wait = s.first_probe_wait
        self.recheck_interval = s.recheck_interval
        self.warm_first_token = s.warm_first_token
        self.warm_first_token_factor = s.warm_first_token_factor
        self.warm_window = s.warm_window
        self.background_trials = s.background_trials
        self.calibrate_speeds = s.calibrate_speeds
        self.calibration_cooldown = s.calibration_cooldown
        self._shared = shared_state
        """Fleet mode hooks (see :mod:`langchain_contextharbor.fleet`); None: local only."""
        self._lock = threading.RLock()
        self._backends = [
            BackendRuntime(cfg, i, CircuitBreaker(s.breaker_policy))
            for i, cfg in enumerate(backends)
        ]
        self._by_name = {b.config.name: b for b in self._backends}
        self._version = 0
        """Bumped on every change of what plans depend on (plans are cached per version)."""
        self._keys: dict[str, str] = {}
        """model name as callers spell it -> normalized name (bounded)."""
        self.speeds: dict[tuple[str, str], SpeedEstimate] = {}
        """(backend name, normalized model) -> learned speed. Plain data (fleet-shareable)."""
        self.answer_tokens: dict[str, float] = {}
        """normalized model -> decaying average answer length, over every backend."""
        self._learned_at: dict[tuple[str, str], float] = {}
        """(backend, normalized model) -> perf_counter() of the last sample taken."""

    @property
    def backends(self) -> list[BackendRuntime]:
        return self._backends

    def get(self, name: str) -> BackendRuntime:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"no backend named {name!r}; configured: {sorted(self._by_name)}"
            ) from None

    def key(self, model: str) -> str:
        """The normalized name of ``model`` (cached: this runs on every call)."""
        key = self._keys.get(model)
        if key is None:
            key = self._keys[model] = normalize_model_name(model)
            if len(self._keys) > 1024:
                self._keys.clear()
        return key

    def publish_pending(self, b: BackendRuntime) -> None:
        """Hand a breaker change decided under the lock to the fleet (outside the lock)."""
        pending, b.publish = b.publish, None
        if pending is not None and self._shared is not None:
            self._shared.publish_breaker(b.config.name, pending, self.clock())

    def apply_fleet_view(self, now: float) -> None:
        """Feed the fleet's shared state into the rows (fleet mode only): in-flight counts,
        breakers another worker moved, its learned 404 and out-of-memory marks."""
        assert self._shared is not None
        view = self._shared.view(now)
        with self._lock:
            for b in self._backends:
                v = view.get(b.config.name) if view is not None else None
                prev, b.fleet = b.fleet, v
                if v is None:
                    continue
                seen = prev.breaker if prev is not None else None
                changed = b.breaker.adopt_shared(v.breaker, now, seen)
                for k, until in v.missing.items():
                    if until > b.missing.get(k, float("-inf")):
                        b.missing[k] = until
                        changed = True
                for k, mark in v.oom.items():
                    old = b.oom.get(k)
                    if old is None or mark[1] > old[1] or (mark[1] == old[1] and mark[0] < old[0]):
                        b.oom[k] = mark
                        changed = True
                if changed:
                    self._version += 1

    def first_token_deadline(self, name: str, model: str) -> tuple[float | None, str]:
        """A short first-token deadline for a call on ``name`` when no load is coming, else
        ``(None, why)`` (the configured one applies).

        No load is coming when ``/api/ps`` lists the model there, or a call on it succeeded
        within ``warm_window`` seconds, and the server answered (a call or a probe) within
        that window. The deadline is ``warm_first_token_factor`` times the learned time to
        first token (the prior's before any call), at least ``warm_first_token`` seconds,
        never more than the configured one. With another call queued ahead on the last slot
        the long deadline stays: waiting for a slot is not a hang.

        A backend with no probe evidence (never probed, or its last probe failed) while a
        probe of it is out gets a :class:`~langchain_contextharbor._transport.ProbeWatch`
        instead: until that probe's ``/api/version`` verdict, at most the probe timeout
        plus a margin from the probe's start; the transport then ends the attempt at once
        ("down") or applies the cold deadline ("up")."""
        b = self._by_name[name]
        p = b.probe
        if p is None or not p.ok:
            hf = b.health_future
            if hf is not None and not hf.done():
                probe = b.config.timeouts.probe
                until = b.probe_started + probe + EVIDENCE_MARGIN
                return ProbeWatch.make(name, hf, until, probe), "no probe evidence yet"
        floor = self.warm_first_token
        if floor is None:
            return None, ""
        now = self.clock()
        window = self.warm_window
        at = b.answered_at
        if at is None or now - at > window:
            return None, "cold deadline: the server has not answered recently"
        key = self._keys.get(model) or normalize_model_name(model)
        loaded = p is not None and p.loaded is not None and key in p.loaded
        if not loaded:
            seen = b.warm.get(key)
            if seen is None or now - seen > window:
                return None, "cold deadline: the model may have to load"
        if b.in_flight > b.config.max_parallel:
            return None, "cold deadline: queued behind other calls"
        sp = self.speeds.get((name, key))
        deadline = (
            floor if sp is None else max(floor, self.warm_first_token_factor * sp.first_token_s)
        )
        limit = b.config.timeouts.first_token
        if deadline > limit:
            deadline = limit
        # Constant texts: this runs on every call; the caller formats them only on failure.
        return deadline, "model loaded (/api/ps)" if loaded else "model answered here recently"

    def learn(self, name: str, key: str, info: Mapping[str, Any], queued: bool) -> None:
        """Update the learned speed of normalized model ``key`` (under the lock). Plans are
        re-made only when the estimate moved by more than a tenth, so steady calls keep
        hitting the plan cache."""
        sk = (name, key)
        old = self.speeds.get(sk)
        if old is not None and old.samples >= 8:
            # Enough to plan on: at most ten samples a second from here (the hot path of a
            # steady stream of calls must not pay for learning on every call).
            t = time.perf_counter()
            if t - self._learned_at.get(sk, 0.0) < 0.1:
                return
            self._learned_at[sk] = t
        new = learn_speed(old, info, queued=queued)
        if new is None or new is old:
            return
        self.speeds[sk] = new
        prev = self.answer_tokens.get(key)
        ec = float(info["eval_count"])
        self.answer_tokens[key] = ec if prev is None else prev + DECAY * (ec - prev)
        before, after = service_s(old), service_s(new)
        if old is None or abs(after - before) > 0.1 * before:
            self._version += 1

    def _circuit_admits(self, b: BackendRuntime, now: float) -> bool:
        """Whether ``b``'s circuit lets a call through now (fleet-wide in fleet mode)."""
        if not b.breaker.would_allow(now):
            return False
        f = b.fleet
        return f is None or f.breaker is None or not f.breaker.trial_busy

    def admits_on_evidence(self, b: BackendRuntime, now: float) -> bool:
        """A call that finds every backend's circuit closed off may still try ``b`` when its
        last probe answered after the last failure counted there (the rule:
        :meth:`~langchain_contextharbor.breaker.CircuitBreaker.admits_on_evidence`). Called
        under the lock, only once the circuit refused (never on the hot path)."""
        p = b.probe
        if p is None or not p.ok or not b.breaker.admits_on_evidence(p.at):
            return False
        return not any(self._circuit_admits(o, now) for o in self._backends)

    def facts(self, key: str, now: float) -> list[BackendFacts]:
        """Each row's facts about normalized model ``key``, as plain values for
        :func:`~langchain_contextharbor._facts.build_snapshots` (called under the lock)."""
        out = []
        admitted = [self._circuit_admits(b, now) for b in self._backends]
        if not any(admitted):  # every circuit closed off: a probe that says "up" decides
            admitted = [self.admits_on_evidence(b, now) for b in self._backends]
        for b, allows in zip(self._backends, admitted, strict=True):
            br = b.breaker
            out.append(
                BackendFacts(
                    b.config,
                    b.index,
                    b.probe,
                    b.missing.get(key),
                    b.shows.get(key),
                    b.oom.get(key),
                    br.state,
                    br.retry_at(),
                    allows,
                    b.load,
                    self.speeds.get((b.config.name, key)),
                )
            )
        return out

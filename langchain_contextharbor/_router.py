"""The router: the backend table, planning and the call lifecycle of one chat model.

Why a separate object: the chat model is a pydantic value users copy and bind; the
router is the mutable, lock-protected state behind it (one per HybridChatOllama, shared
with embeddings built with ``router=``). It is made of four parts, one job each:

- :mod:`~langchain_contextharbor._table` -- the rows (one per backend), the lock, the
  version plans are cached under, learned speeds, settings and fleet view;
- :mod:`~langchain_contextharbor._prober` -- probes, probe clients, the thread pool, NVML
  and host memory, and the explicit waits for evidence;
- :mod:`~langchain_contextharbor._background` -- trial calls and speed calibration;
- this module -- plans (cached) and the call lifecycle: admission (``acquire``), outcomes
  (``record_success`` / ``record_failure``), ``release``, deadlines and ``stats()``
  (built by :mod:`~langchain_contextharbor._router_stats`).

Pure code (probe parsing, speed learning, snapshot building, request sizing) lives in
:mod:`~langchain_contextharbor._facts` and the decision itself in
:func:`~langchain_contextharbor.routing.plan_route`.

The path of one call: ``prepare(model)`` (schedules stale probes, reads the fleet's view;
never waits), then ``wait_for_evidence()`` (sync; async: ``await await_evidence()``;
waits only on a fresh router or when every backend is closed off, at most
``first_probe_wait``), then ``plan(...)`` (no I/O, never blocks; usually one comparison
with the last plan), then per candidate ``acquire`` ... ``record_success`` /
``record_failure`` ... ``release``.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from langchain_contextharbor._background import Background
from langchain_contextharbor._facts import (
    ProbeResult,
    build_snapshots,
    route_costs,
    size_request,
)
from langchain_contextharbor._prober import Prober
from langchain_contextharbor._router_stats import router_stats
from langchain_contextharbor._settings import RouterSettings
from langchain_contextharbor._table import BackendRuntime, BackendTable, Clock
from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.classify import Classification, FailoverCategory
from langchain_contextharbor.fleet import SharedBreaker, SharedState
from langchain_contextharbor.routing import RoutePlan, RoutePolicy, plan_route
from langchain_contextharbor.sizing import normalize_model_name

__all__ = ["BackendRuntime", "Router"]


class Router(BackendTable):
    """Planning and the call lifecycle over a backend table. Thread- and task-safe."""

    def __init__(
        self,
        backends: Sequence[BackendConfig],
        settings: RouterSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        nvml: Any = None,
        host_memory: Callable[[], int | None] | None = None,
        shared_state: SharedState | None = None,
    ) -> None:
        """``settings``: how it probes, plans and recovers (defaults when None). The other
        arguments are collaborators, injected: the clock, an NVML module, a host-memory
        reader, the fleet's shared state."""
        super().__init__(
            backends, settings or RouterSettings(), clock=clock, shared_state=shared_state
        )
        self._prober = Prober(self, nvml=nvml, host_memory=host_memory)
        self._background = Background(self, self._prober)
        self.trial_futures = self._background.trial_futures
        """backend name -> its background trial call (see :meth:`trial_in_background`)."""
        self.calibration_futures = self._background.calibration_futures
        """backend name -> its speed calibration request (see :meth:`calibrate`)."""
        self._costs: Mapping[str, tuple[float, float]] = {}
        """Fleet mode: per backend, the last plan's cost estimate (see route_costs)."""
        self._plan_cache: dict[tuple[Any, ...], tuple[float, RoutePlan]] = {}
        self.outages_warned: dict[str, str] = {}
        """Backends whose current outage was logged (see ``_admission.note_outages``)."""
        self._last_plan: tuple[Any, ...] | None = None
        """The last plan with its key (model, num_ctx, policy, sizes, version, loads) and
        expiry: a repeated call checks it without building and hashing the cache key."""

    # ------------------------------------------------------------------ before a plan
    def prepare(self, model: str) -> None:
        """The step before a plan that may start I/O but never waits for it: schedule a
        refresh of stale probes and of ``model``'s ``/api/show`` (on the prober's threads),
        and in fleet mode read the fleet's view (a cached, bounded store read) and schedule
        the periodic speed exchange. Cheap on the hot path: two comparisons."""
        now = self.clock()
        if self.background_probes:
            p = self._prober
            key = self._keys.get(model) or self.key(model)
            if now >= p.next_check or key not in p.shows_checked:
                p.schedule_stale(now, key)
        if self._shared is not None:
            self.apply_fleet_view(now)
            self._background.maybe_sync_speeds(now)

    def wait_for_evidence(self) -> None:
        """Block until the probes a plan needs are in (first probes of a fresh router, or a
        recheck of backends that are all closed off), bounded by ``first_probe_wait``.
        Inside an event loop it returns at once (async callers use :meth:`await_evidence`)."""
        p = self._prober
        if p.primed and (p.unstuck_version == self._version or not self.background_probes):
            return  # hot path: nothing to wait for
        p.wait_for_evidence()

    async def await_evidence(self) -> None:
        """The async twin of :meth:`wait_for_evidence`: awaits, never blocks the loop."""
        await self._prober.await_evidence()

    def evidence_due(self) -> bool:
        """Whether :meth:`await_evidence` may have probes to wait for (False on the hot
        path: primed, and some backend known usable at this version), so async calls skip
        creating and awaiting its coroutine."""
        p = self._prober
        return not p.primed or (p.unstuck_version != self._version and self.background_probes)

    # ------------------------------------------------------------------ planning
    def plan(
        self,
        model: str,
        *,
        num_ctx: int,
        sizes: Mapping[str, float],
        policy: RoutePolicy,
        chat: bool = True,
    ) -> RoutePlan:
        """Plan a call on what the table knows now: no I/O, never blocks (call
        :meth:`prepare` and :meth:`wait_for_evidence` first). Plans are cached until the
        table changes (a probe, a failure, a breaker transition, a change of in-flight
        counts or of the size table) or a time-dependent fact expires, so the hot path
        usually costs one comparison. A plan that names unmeasured backends starts their
        calibration (:meth:`calibrate`, a background submit, on a cache miss only), unless
        ``chat=False``: an embeddings plan, whose model cannot answer a calibration chat."""
        now = self.clock()
        key = self._keys.get(model) or self.key(model)
        with self._lock:
            # The key and the snapshots are read under one lock, so a plan is never stored
            # under a state (version, in-flight counts) other than the one it was made from.
            version = self._version
            if self._shared is None:
                loads = tuple([b.in_flight for b in self._backends])
            else:
                loads = tuple([b.load for b in self._backends])
            last = self._last_plan
            if (
                last is not None
                and last[0] == model
                and last[1] == num_ctx
                and last[2] is policy
                and last[4] == version
                and last[5] == loads
                and now < last[6]
                and last[3] == sizes
            ):
                # Hot path: the same request as the last plan, on the same state (no tuple
                # of the size table to build and hash, no dataclass hash of the policy).
                return last[7]  # type: ignore[no-any-return]
            ck: tuple[Any, ...] = (model, num_ctx, policy, tuple(sizes.items()), version, loads)
            try:
                hit = self._plan_cache.get(ck)
            except TypeError:  # an unhashable value in the size table: sizing raises below
                ck, hit = (), None
            if hit is not None and now < hit[0]:
                self._last_plan = (model, num_ctx, policy, dict(sizes), *ck[4:], *hit)
                return hit[1]
            snaps, tags_size, arch, valid_until = build_snapshots(
                self.facts(key, now), key, num_ctx, now, self.probe_ttl * 3
            )
        req = size_request(model, num_ctx, sizes, tags_size, arch, self.answer_tokens.get(key))
        plan = plan_route(req, snaps, policy)
        if plan.unmeasured and chat and self.calibrate_speeds:  # a cache miss only
            self.calibrate(
                plan.unmeasured, model, num_ctx=num_ctx, answer_tokens=policy.prior.output_tokens
            )
        if self._shared is not None:
            self._costs = route_costs(req, snaps, policy)
        if ck:
            with self._lock:
                if len(self._plan_cache) > 512:
                    self._plan_cache.clear()
                self._plan_cache[ck] = (valid_until, plan)
                self._last_plan = (model, num_ctx, policy, dict(sizes), *ck[4:], valid_until, plan)
        return plan

    # ------------------------------------------------------------------ call lifecycle
    def acquire(self, name: str, spill_to: Sequence[str] = ()) -> bool:
        """Reserve a call on ``name`` (breaker permitting) and count it in flight.

        In fleet mode the reservation is checked fleet-wide: False when another worker
        holds the trial call, or when ``name`` has no free slot but one of ``spill_to``
        (the plan's next candidates, in order) has."""
        b = self._by_name[name]
        now = self.clock()
        with self._lock:
            before = b.breaker.state
            if b.breaker.acquire(now):
                trial = b.breaker.state == "half_open"
                if b.breaker.state != before:
                    self._version += 1
            elif self.admits_on_evidence(b, now):
                trial = False  # every circuit is closed off, a probe says this one is up
            else:
                return False
            b.in_flight += 1
            b.stats.requests += 1
        sh = self._shared
        if (
            sh is not None
            and sh.acquire(name, now, trial=trial, spill_to=spill_to, costs=self._costs) is False
        ):
            # Another worker holds the fleet's trial call, or took the last free slot since
            # this call was planned while a later candidate still has one: skip to it.
            with self._lock:
                b.in_flight -= 1
                b.stats.requests -= 1
                b.breaker.release()
                self._version += 1
            return False
        return True

    def acquire_joining_trial(self, name: str) -> bool:
        """Count a call on ``name`` while its background trial runs: the last resort of a
        call whose other candidates all failed (a trial must never make a call fail that the
        server under trial could have answered). False when the circuit closed off again."""
        b = self._by_name[name]
        with self._lock:
            if b.breaker.state != "half_open":
                return self.acquire(name)
            b.in_flight += 1
            b.stats.requests += 1
        if self._shared is not None:
            self._shared.acquire(name, self.clock(), trial=False, costs=self._costs)
        return True

    def release(self, name: str, *, abandoned: bool = False) -> None:
        """End a call on ``name``; ``abandoned``: it ended with neither a success nor a
        failure recorded (the caller stopped reading, or cancelled)."""
        b = self._by_name[name]
        with self._lock:
            b.in_flight -= 1
            if abandoned:
                b.stats.abandoned += 1
            before = b.breaker.state
            b.breaker.release()
            if b.breaker.state != before:
                self._version += 1
        if self._shared is not None:
            self._shared.release(name, self.clock())

    def record_success(
        self,
        name: str,
        latency: float,
        ttft: float | None,
        *,
        model: str | None = None,
        info: Mapping[str, Any] | None = None,
        queued: bool = False,
    ) -> None:
        """A call succeeded; ``info`` (the final chunk's generation_info, with Ollama's
        timings) teaches the router this model's speed on this backend."""
        b = self._by_name[name]
        with self._lock:
            br = b.breaker
            closed = br.state != "closed"
            if not br.is_clean:
                self._version += 1
                br.record_success()
            stats = b.stats
            stats.successes += 1
            now = self.clock()
            b.answered_at = now
            stats.latency.add(latency)
            if ttft is not None:
                stats.ttft.add(ttft)
            if model:
                key = self._keys.get(model) or normalize_model_name(model)
                b.warm[key] = now
                if info:
                    self.learn(name, key, info, queued)
        if closed and self._shared is not None:
            self._shared.publish_breaker(name, SharedBreaker("closed"), self.clock())

    def attempt_limits(self, name: str, model: str) -> tuple[float | None, str, bool]:
        """:meth:`first_token_deadline` for an attempt starting now on ``name``, and whether
        it starts behind other calls of this router on every slot (it will wait). One call
        per attempt on the hot path."""
        b = self._by_name[name]
        deadline, note = self.first_token_deadline(name, model)
        return deadline, note, b.in_flight > b.config.max_parallel

    def record_failure(
        self,
        name: str,
        model: str,
        num_ctx: int,
        c: Classification,
        message: str,
        *,
        fell_back: bool,
        interrupted: bool = False,
    ) -> None:
        b = self._by_name[name]
        now = self.clock()
        key = normalize_model_name(model)
        with self._lock:
            self._version += 1
            b.stats.failures[c.category.value] += 1
            if fell_back:
                b.stats.fallbacks += 1
            if interrupted:
                b.stats.interrupted += 1
            before = (b.breaker.state, b.breaker.opened_at)
            if c.counts_against_backend:
                # The evidence for the breaker's overload rule: a connect timeout on a server
                # that answered recently and whose last probe did not see it down is load.
                p = b.probe
                b.breaker.record_failure(
                    now,
                    slow_accept=c.slow_accept,
                    answered_at=b.answered_at,
                    probe_down=p is not None and not p.ok,
                )
            if c.category is FailoverCategory.MODEL_NOT_FOUND:
                b.missing[key] = now + self.missing_ttl
            elif c.category is FailoverCategory.OUT_OF_MEMORY:
                old = b.oom.get(key)
                ctx = min(num_ctx, old[0]) if (old and now < old[1]) else num_ctx
                b.oom[key] = (ctx, now + self.oom_cooldown, message[:200])
            br = b.breaker
            opened = (br.state, br.opened_at) != before and br.state == "open"
            shared = SharedBreaker("open", br.failures, br.opened_at, br.cooldown)
        sh = self._shared
        if sh is not None:
            if opened:
                sh.publish_breaker(name, shared, now)
            if c.category is FailoverCategory.MODEL_NOT_FOUND:
                sh.publish_mark(name, "missing", key, now + self.missing_ttl, now)
            elif c.category is FailoverCategory.OUT_OF_MEMORY:
                ctx, until, msg = b.oom[key]
                sh.publish_mark(name, "oom", key, until, now, num_ctx=ctx, message=msg)

    def count_failure(self, name: str, c: Classification) -> None:
        """Feed ``name``'s breaker with a failure :meth:`record_failure` already recorded
        without a verdict: the failover rule defers the count of an error answer until
        another backend has shown it was not the request's fault (``_failover``)."""
        b = self._by_name[name]
        now = self.clock()
        with self._lock:
            self._version += 1
            br = b.breaker
            before = (br.state, br.opened_at)
            br.record_failure(now)
            opened = (br.state, br.opened_at) != before and br.state == "open"
            shared = SharedBreaker("open", br.failures, br.opened_at, br.cooldown)
        if opened and self._shared is not None:
            self._shared.publish_breaker(name, shared, now)

    # ------------------------------------------------------------------ background work
    def trial_in_background(self, name: str, model: str) -> bool:
        """Take the trial call of ``name`` off the user's call, when one is due.

        Why a background request and not a hedge: a trial is a call to a server that failed
        last time, so it is likely to fail again (hang for a whole first-token deadline).
        Racing the user's call against it would still hold the caller until one of the two
        produced a token and would need both answers cancelled cleanly; a router-owned
        request of one token costs the caller nothing and its outcome still moves the
        breaker (success closes the circuit, failure re-opens it with backoff). The caller
        goes on to the next candidate, so only call this when there is one.

        Returns True when this call should skip ``name`` (a trial was started now, or
        another is still running)."""
        if self._by_name[name].breaker.state == "closed" or not self.background_trials:
            return False  # hot path: no trial due
        return self._background.trial_in_background(name, model)

    def calibrate(
        self,
        names: Iterable[str],
        model: str,
        *,
        num_ctx: int | None = None,
        answer_tokens: float = 200.0,
    ) -> list[str]:
        """Measure the speed of ``model`` on each backend of ``names`` that has no measure
        yet, with one small chat request in the background; returns where one started. Why
        and how it is bounded: :meth:`~langchain_contextharbor._background.Background.calibrate`."""
        return self._background.calibrate(names, model, num_ctx, answer_tokens)

    def sync_speeds(self) -> int:
        """Fleet mode: publish this worker's learned speeds and take the fleet's for every
        (backend, model) this worker has not measured yet, so a new worker starts with what
        the others learned. Runs off the hot path every ``speed_sync_s``. Returns how many
        estimates were taken."""
        return self._background.sync_speeds()

    def submit_background(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the router's worker threads (errors are logged, never raised)."""
        self._prober.submit_background(fn)

    # ------------------------------------------------------------------ probes
    def request_probe(self, name: str) -> concurrent.futures.Future[ProbeResult]:
        """Probe backend ``name`` now, or join the probe running there; never waits."""
        return self._prober.submit_probe(self.get(name))

    def refresh(self, model: str | None = None) -> dict[str, ProbeResult]:
        """Probe every backend now (sharing any probe already running) and wait; with
        ``model``, also read its ``/api/show`` where it is."""
        return self._prober.refresh(model)

    async def arefresh(self, model: str | None = None) -> dict[str, ProbeResult]:
        """The async twin of :meth:`refresh`; it awaits the same shared futures."""
        return await self._prober.arefresh(model)

    def reset(self, name: str | None = None) -> None:
        """Forget learned failures of backend ``name`` (all when None): circuit, remembered
        404s, out-of-memory marks and a failed probe (it is probed again on the next plan)."""
        targets = [self.get(name)] if name is not None else self._backends
        with self._lock:
            for b in targets:
                b.breaker.reset()
                b.missing.clear()
                b.oom.clear()
                if b.probe is not None and not b.probe.ok:
                    b.probe = None
            self._version += 1
            self._prober.changed()
        if self._shared is not None:  # closes the circuits fleet-wide too
            for b in targets:
                self._shared.publish_breaker(b.config.name, SharedBreaker("closed"), self.clock())

    def close(self) -> None:
        """Stop the probe threads and close the probe clients. The router stays usable:
        a later call or ``refresh()`` starts them again."""
        self._prober.close()
        if self._shared is not None:
            self._shared.close()  # fleet mode: queued lease releases are sent first

    def stats(self) -> dict[str, Any]:
        """Per backend: counters, circuit, load, speeds (see :mod:`~._router_stats`)."""
        return router_stats(self)

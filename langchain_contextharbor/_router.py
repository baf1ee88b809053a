"""Router state and the I/O that feeds it: probes, NVML, counters, breakers.

Why a separate object: the chat model is a pydantic value users copy and bind; the
router is the mutable, lock-protected state behind it (one per HybridChatOllama). It
turns what it has observed into :class:`~langchain_contextharbor.routing.BackendSnapshot`
values and hands them to the pure :func:`~langchain_contextharbor.routing.plan_route`.

Probes (``/api/version``, ``/api/tags``, ``/api/ps``, and ``/api/show`` per model) run on a
small thread pool, at most one at a time per backend; sync callers wait on the same
``concurrent.futures.Future`` that async callers await, so both share a probe. On the hot
path a stale cache only *schedules* a refresh. The one exception is the very first plan
of a router: it has no facts at all (is the model on the GPU server? how big is it?), and
scripts, notebooks and CLI tools make *only* first calls, so it waits for the backends'
first probes, bounded by ``first_probe_wait`` seconds of real time (a loopback probe takes
about a millisecond). Once every backend has been probed, or the budget is spent, no plan
waits again unless it asks to (``refresh()``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from langchain_contextharbor._settings import RouterSettings
from langchain_contextharbor._stats import BackendStats
from langchain_contextharbor._transport import shared_ssl_context
from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.breaker import BreakerPolicy, CircuitBreaker
from langchain_contextharbor.classify import Classification, FailoverCategory
from langchain_contextharbor.fleet import SharedBackend, SharedBreaker, SharedState
from langchain_contextharbor.routing import (
    BackendSnapshot,
    LoadedModel,
    RoutePlan,
    RoutePolicy,
    RouteRequest,
    SpeedEstimate,
    estimate_finish,
    plan_route,
)
from langchain_contextharbor.sizing import (
    DEFAULT_MODEL_SIZES,
    DEFAULT_NUM_CTX,
    ArchInfo,
    estimate_model_bytes,
    estimate_request_bytes,
    lookup_model_size,
    normalize_model_name,
)

logger = logging.getLogger("langchain_contextharbor")

Clock = Callable[[], float]


@dataclass
class ProbeResult:
    ok: bool
    at: float
    latency_ms: float
    version: str | None = None
    reason: str | None = None
    models: dict[str, int] | None = None
    """normalized name -> size bytes, from /api/tags"""
    loaded: dict[str, LoadedModel] | None = None
    gpu_free: int | None = None
    gpu_total: int | None = None
    host_available: int | None = None
    capacity_source: str = "unknown"
    digests: dict[str, str] | None = None
    """normalized name -> digest, from /api/tags (which build of a model this server has)"""


@dataclass
class BackendRuntime:
    config: BackendConfig
    index: int
    breaker: CircuitBreaker
    in_flight: int = 0
    probe: ProbeResult | None = None
    probe_future: concurrent.futures.Future[ProbeResult] | None = None
    shows: dict[str, tuple[float, ArchInfo | None]] = field(default_factory=dict)
    show_futures: dict[str, concurrent.futures.Future[ArchInfo | None]] = field(
        default_factory=dict
    )
    missing: dict[str, float] = field(default_factory=dict)
    """normalized model -> until (learned 404)"""
    oom: dict[str, tuple[int, float, str]] = field(default_factory=dict)
    """normalized model -> (num_ctx, until, message) (learned out-of-memory)"""
    stats: BackendStats = field(default_factory=BackendStats)
    client: httpx.Client | None = None
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


def _parse_loaded(items: Iterable[Mapping[str, Any]]) -> dict[str, LoadedModel]:
    out: dict[str, LoadedModel] = {}
    for m in items:
        try:
            name = str(m.get("model") or m.get("name") or "")
            if not name:
                continue
            size = int(m.get("size") or 0)
            out[normalize_model_name(name)] = LoadedModel(
                name=name,
                size=size,
                size_vram=int(m.get("size_vram") or 0),
                expires_at=m.get("expires_at"),
                context_length=int(m["context_length"]) if m.get("context_length") else None,
            )
        except (TypeError, ValueError):
            continue
    return out


def _parse_tags(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in items:
        name = m.get("model") or m.get("name")
        if isinstance(name, str) and name:
            try:
                out[normalize_model_name(name)] = int(m.get("size") or 0)
            except (TypeError, ValueError):
                out[normalize_model_name(name)] = 0
    return out


_DECAY = 0.3
"""Weight of a new sample in the learned speed averages (about the last five calls)."""


def learn_speed(
    old: SpeedEstimate | None,
    info: Mapping[str, Any],
    *,
    queued: bool = False,
    answer_tokens: float | None = None,
) -> SpeedEstimate | None:
    """Fold one final chunk's Ollama timings (integer nanoseconds) into ``old``.

    Pure. Returns ``old`` unchanged when the chunk carries no usable generation timing.
    Generation speed and answer length are decaying averages; the warm time to first token
    falls at once to a quicker sample and rises slowly (a request that waited for a slot
    must not make the server look slow); only a ``load_duration`` above a quarter second
    counts as a cold load. A call that waited for a slot (``queued``) teaches only the
    generation speed and answer length: servers count the wait into the other timings
    (Ollama into ``load_duration``, some stand-ins into ``prompt_eval_duration``). A
    calibration request's answer is cut short on purpose: pass ``answer_tokens`` (the
    answer length known from real calls) and its length teaches nothing."""
    ec, ed = info.get("eval_count"), info.get("eval_duration")
    if not (isinstance(ec, int) and ec > 0 and isinstance(ed, (int, float)) and ed > 0):
        return old
    tps = ec / (ed / 1e9)
    ped = info.get("prompt_eval_duration")
    first = ped / 1e9 if isinstance(ped, (int, float)) and ped > 0 else 0.0
    ld = info.get("load_duration")
    load = ld / 1e9 if isinstance(ld, (int, float)) and ld / 1e9 > 0.25 else None
    if old is None or old.samples <= 0:
        length = float(ec) if answer_tokens is None else answer_tokens
        return SpeedEstimate(tps, first, length, None if queued else load, 1)
    a = _DECAY
    length = old.output_tokens + a * (ec - old.output_tokens)
    if queued:
        new_first, load = old.first_token_s, None
    elif first < old.first_token_s:
        new_first = first
    else:
        new_first = old.first_token_s + 0.1 * (first - old.first_token_s)
    if load is None:
        new_load = old.load_s
    elif old.load_s is None:
        new_load = load
    else:
        new_load = old.load_s + a * (load - old.load_s)
    return SpeedEstimate(
        old.tokens_per_s + a * (tps - old.tokens_per_s),
        new_first,
        old.output_tokens if answer_tokens is not None else length,
        new_load,
        old.samples + 1,
    )


CALIBRATION_TOKENS = 16
"""Tokens a speed calibration asks for (``num_predict``): enough for a generation speed."""
CALIBRATION_PROMPT = "Count from one to twenty in words, separated by commas."
"""A fixed, short prompt whose answer is longer than :data:`CALIBRATION_TOKENS`."""


class _Missing(Exception):
    """A calibration request got a 404: the model is not on that server."""


def _service_s(sp: SpeedEstimate | None) -> float:
    return sp.first_token_s + sp.output_tokens / sp.tokens_per_s if sp else 0.0


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _parse_digests(items: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in items:
        name = m.get("model") or m.get("name")
        digest = m.get("digest")
        if isinstance(name, str) and name and isinstance(digest, str) and digest:
            out[normalize_model_name(name)] = digest
    return out


def _json_list(resp: httpx.Response, key: str) -> list[Mapping[str, Any]]:
    resp.raise_for_status()
    data = resp.json()
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"malformed {resp.request.url.path} reply: no {key!r} list")
    return [x for x in data[key] if isinstance(x, dict)]


class Router:
    """Mutable routing state of one HybridChatOllama. Thread- and task-safe."""

    def __init__(
        self,
        backends: Sequence[BackendConfig],
        settings: RouterSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        breaker_policy: BreakerPolicy | None = None,
        probe_ttl: float = 10.0,
        show_ttl: float = 600.0,
        oom_cooldown: float = 120.0,
        missing_ttl: float = 60.0,
        background_probes: bool = True,
        first_probe_wait: float = 0.25,
        recheck_interval: float = 1.0,
        warm_first_token: float | None = 10.0,
        warm_first_token_factor: float = 5.0,
        warm_window: float = 120.0,
        background_trials: bool = True,
        calibrate_speeds: bool = True,
        calibration_cooldown: float = 300.0,
        nvml: Any = None,
        host_memory: Callable[[], int | None] | None = None,
        shared_state: SharedState | None = None,
    ) -> None:
        if settings is not None:  # the one value the chat model and embeddings hand over
            breaker_policy = settings.breaker_policy
            probe_ttl, show_ttl = settings.probe_ttl, settings.show_ttl
            oom_cooldown, missing_ttl = settings.oom_cooldown, settings.missing_ttl
            background_probes = settings.background_probes
            first_probe_wait = settings.first_probe_wait
            recheck_interval = settings.recheck_interval
            warm_first_token = settings.warm_first_token
            warm_first_token_factor = settings.warm_first_token_factor
            warm_window = settings.warm_window
            background_trials = settings.background_trials
            calibrate_speeds = settings.calibrate_speeds
            calibration_cooldown = settings.calibration_cooldown
        self.clock = clock
        self.first_probe_wait = first_probe_wait
        self.recheck_interval = recheck_interval
        self.warm_first_token = warm_first_token
        self.warm_first_token_factor = warm_first_token_factor
        self.warm_window = warm_window
        self.background_trials = background_trials
        self.trial_futures: dict[str, concurrent.futures.Future[bool]] = {}
        """backend name -> its background trial call (see :meth:`trial_in_background`)."""
        self.calibrate_speeds = calibrate_speeds
        self.calibration_cooldown = calibration_cooldown
        self.calibration_futures: dict[str, concurrent.futures.Future[bool]] = {}
        """backend name -> its speed calibration request (see :meth:`calibrate`)."""
        self._calibrated_at: dict[tuple[str, str], float] = {}
        """(backend, normalized model) -> clock time its last calibration started."""
        self._primed = not background_probes or first_probe_wait <= 0
        """True once no plan needs to wait for a first probe any more."""
        self._prime_deadline: float | None = None
        """perf_counter() time after which first plans stop waiting (set by the first plan)."""
        self._shared = shared_state
        self._costs: Mapping[str, tuple[float, float]] = {}
        self.speed_sync_s = 5.0
        """Fleet mode: how often learned speeds are exchanged with the fleet (seconds)."""
        self._next_speed_sync = float("-inf")
        """Fleet mode hooks (see :mod:`langchain_contextharbor.fleet`); None: local only."""
        self.probe_ttl = probe_ttl
        self.show_ttl = show_ttl
        self.oom_cooldown = oom_cooldown
        self.missing_ttl = missing_ttl
        self.background_probes = background_probes
        self._lock = threading.RLock()
        self._backends = [
            BackendRuntime(cfg, i, CircuitBreaker(breaker_policy)) for i, cfg in enumerate(backends)
        ]
        self._by_name = {b.config.name: b for b in self._backends}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._nvml_arg = nvml
        self._nvml_reader: Any = None
        self._host_memory = host_memory
        self._version = 0
        self._next_probe_check = float("-inf")
        self._shows_checked: set[str] = set()
        self._keys: dict[str, str] = {}
        """Bumped on every change of what plans depend on (plans are cached per version)."""
        self._plan_cache: dict[tuple[Any, ...], tuple[float, RoutePlan]] = {}
        self._last_plan: tuple[Any, ...] | None = None
        """The last plan with its key (model, num_ctx, policy, sizes, version, loads) and
        expiry: a repeated call checks it without building and hashing the cache key."""
        self.speeds: dict[tuple[str, str], SpeedEstimate] = {}
        """(backend name, normalized model) -> learned speed. Plain data (fleet-shareable)."""
        self._learned_at: dict[tuple[str, str], float] = {}
        self._unstuck_version = -1
        """Router version at which some backend was known usable (no recheck needed)."""
        self.answer_tokens: dict[str, float] = {}
        """normalized model -> decaying average answer length, over every backend."""

    # ------------------------------------------------------------------ access
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

    # ------------------------------------------------------------------ planning
    def plan(
        self,
        model: str,
        *,
        num_ctx: int,
        sizes: Mapping[str, float],
        policy: RoutePolicy,
        schedule_refresh: bool = True,
        wait: bool = True,
    ) -> RoutePlan:
        """Plan a call. Plans are cached until the router's state changes (a probe, a
        failure, a breaker transition, a change of in-flight counts or of the size table) or
        a time-dependent fact expires, so the hot path usually costs one dict lookup."""
        now = self.clock()
        key = self._keys.get(model)
        if key is None:
            key = self._keys[model] = normalize_model_name(model)
            if len(self._keys) > 1024:
                self._keys.clear()
        if schedule_refresh and self.background_probes:
            self._schedule_stale(now, key)
        if wait:
            self.wait_for_evidence()
        if self._shared is not None:
            self._apply_fleet_view(now)
            if now >= self._next_speed_sync:
                self._next_speed_sync = now + self.speed_sync_s
                self.submit_background(self.sync_speeds)
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
            except TypeError:  # an unhashable value in the size table: estimate raises below
                ck, hit = (), None
            if hit is not None and now < hit[0]:
                self._last_plan = (model, num_ctx, policy, dict(sizes), *ck[4:], *hit)
                return hit[1]
            snaps, tags_size, arch, valid_until = self._snapshots(key, num_ctx, now)
        # A size the user put in the table beats the server's; a built-in default does not.
        user_sizes = {k: v for k, v in sizes.items() if DEFAULT_MODEL_SIZES.get(k) != v}
        if user_sizes and lookup_model_size(model, user_sizes) is not None:
            tags_size = None
        weights = estimate_model_bytes(
            model,
            sizes=sizes,
            tags_size=tags_size,
            parameter_count=arch.parameter_count if arch else None,
            quantization=arch.quantization if arch else None,
        )
        foot = estimate_request_bytes(weights, num_ctx=num_ctx, arch=arch)
        req = RouteRequest(
            model,
            num_ctx,
            weights.bytes,
            foot.total_bytes,
            weights.detail,
            foot.describe(),
            self.answer_tokens.get(key),
        )
        plan = plan_route(req, snaps, policy)
        if plan.unmeasured and self.calibrate_speeds:  # a cache miss only, never the hot path
            self.calibrate(
                plan.unmeasured, model, num_ctx=num_ctx, answer_tokens=policy.prior.output_tokens
            )
        if self._shared is not None:
            self._note_costs(req, snaps, policy)
        if ck:
            with self._lock:
                if len(self._plan_cache) > 512:
                    self._plan_cache.clear()
                self._plan_cache[ck] = (valid_until, plan)
                self._last_plan = (model, num_ctx, policy, dict(sizes), *ck[4:], valid_until, plan)
        return plan

    def _first_probes(self) -> tuple[list[concurrent.futures.Future[ProbeResult]], float]:
        """The in-flight first probes a plan should wait for, and for how long (seconds)."""
        t = time.perf_counter()
        with self._lock:
            if self._prime_deadline is None:
                self._prime_deadline = t + self.first_probe_wait
            left = self._prime_deadline - t
            if self.background_probes:
                for b in self._backends:
                    if b.probe is None and b.probe_future is None:
                        self._submit_probe(b)
            unprobed = [b for b in self._backends if b.probe is None]
            if left <= 0 or not unprobed:
                self._primed = True
                return [], 0.0
            futs = [b.probe_future for b in unprobed if b.probe_future is not None]
            return futs, left

    def _after_first_wait(self, futs: Sequence[concurrent.futures.Future[ProbeResult]]) -> None:
        assert self._prime_deadline is not None
        if all(f.done() for f in futs) or time.perf_counter() >= self._prime_deadline:
            self._primed = True

    def _stuck(self, now: float) -> bool:
        """Whether no backend can be tried: each has a closed-off circuit or a failed probe."""
        for b in self._backends:
            if b.breaker.would_allow(now) and (b.probe is None or b.probe.ok):
                return False
        return True

    def _recheck(self, now: float) -> list[concurrent.futures.Future[ProbeResult]]:
        """Probe the backends a call cannot use (at most one probe each per
        ``recheck_interval``), so a call does not fail on an outage that is already over."""
        futs = []
        with self._lock:
            for b in self._backends:
                if b.breaker.would_allow(now) and (b.probe is None or b.probe.ok):
                    continue
                fut = b.probe_future
                if fut is None and (b.probe is None or now - b.probe.at >= self.recheck_interval):
                    fut = self._submit_probe(b)
                if fut is not None:
                    futs.append(fut)
        return futs

    def _evidence(self) -> tuple[list[concurrent.futures.Future[ProbeResult]], float, bool]:
        """Probes worth waiting for before planning, the budget, and whether they were first
        probes. Cheap when nothing is pending: a flag and one breaker check per backend."""
        if not self._primed:
            futs, left = self._first_probes()
            if futs:
                return futs, left, True
        if self._unstuck_version != self._version and self.background_probes:
            # "Some backend is usable" only changes with the router's state (a version bump),
            # never with time alone: check once per version, not on every call.
            now = self.clock()
            version = self._version
            if self._stuck(now):
                if self.first_probe_wait > 0:
                    return self._recheck(now), self.first_probe_wait, False
            else:
                self._unstuck_version = version
        return [], 0.0, False

    def wait_for_evidence(self) -> None:
        """Block until the probes a plan needs are in (first probes of a fresh router, or a
        recheck of backends that are all closed off), bounded by ``first_probe_wait``."""
        futs, left, first = self._evidence()
        if futs:
            if _in_event_loop():
                return  # never block a loop: async calls await_evidence() before planning
            concurrent.futures.wait(futs, timeout=left)
            if first:
                self._after_first_wait(futs)

    def evidence_due(self) -> bool:
        """Whether :meth:`await_evidence` may have probes to wait for (False on the hot
        path: primed, and some backend known usable at this version), so async calls skip
        creating and awaiting its coroutine."""
        return not self._primed or (
            self._unstuck_version != self._version and self.background_probes
        )

    async def await_evidence(self) -> None:
        """The async twin of :meth:`wait_for_evidence`: awaits, never blocks the loop."""
        futs, left, first = self._evidence()
        if futs:
            await asyncio.wait([asyncio.wrap_future(f) for f in futs], timeout=left)
            if first:
                self._after_first_wait(futs)

    def _snapshots(
        self, key: str, num_ctx: int, now: float
    ) -> tuple[list[BackendSnapshot], int | None, ArchInfo | None, float]:
        """Snapshots of every backend, plus the time until which they stay true."""
        snaps: list[BackendSnapshot] = []
        valid_until = float("inf")
        tags_size: int | None = None
        arch: ArchInfo | None = None
        stale_after = self.probe_ttl * 3
        for b in self._backends:
            cfg = b.config
            p = b.probe if (b.probe and now - b.probe.at <= stale_after) else None
            if p is not None:
                valid_until = min(valid_until, p.at + stale_after)
            has_model: bool | None = None
            model_reason = None
            until = b.missing.get(key)
            if until is not None and now < until:
                valid_until = min(valid_until, until)
                has_model = False
                model_reason = f"model {key!r} not found here (404, remembered {until - now:.0f}s)"
            elif p is not None and p.ok and p.models is not None:
                has_model = key in p.models
                if has_model:
                    size = p.models[key]
                    if size > 0 and tags_size is None:
                        tags_size = size
                else:
                    model_reason = f"model {key!r} not in this server's /api/tags"
            shown = b.shows.get(key)
            if arch is None and shown is not None and shown[1] is not None:
                arch = shown[1]
            loaded = p.loaded.get(key) if (p and p.loaded) else None
            evictable = 0
            if p and p.loaded:
                evictable = sum(
                    (m.size_vram if cfg.kind == "gpu" else m.size) for m in p.loaded.values()
                )
            free, source = self._capacity(cfg, p)
            oom_reason = None
            mark = b.oom.get(key)
            if mark is not None and now < mark[1]:
                valid_until = min(valid_until, mark[1])
            if mark is not None and now < mark[1] and num_ctx >= mark[0]:
                oom_reason = f"num_ctx >= {mark[0]}: {mark[2]}"
            br = b.breaker
            retry_at = br.retry_at()
            if retry_at is not None and now < retry_at:
                # "trial call in N s" must be true when shown: re-plan every 0.1 s meanwhile.
                valid_until = min(valid_until, retry_at, now + 0.1)
            allows = br.would_allow(now)
            if allows and b.fleet is not None and b.fleet.breaker is not None:
                allows = not b.fleet.breaker.trial_busy  # another worker holds the trial
            snaps.append(
                BackendSnapshot(
                    name=cfg.name,
                    kind=cfg.kind,
                    url=cfg.safe_url,
                    index=b.index,
                    priority=cfg.priority,
                    max_parallel=cfg.max_parallel,
                    in_flight=b.load,
                    circuit=br.state,
                    circuit_allows=allows,
                    retry_in=(retry_at - now) if retry_at is not None else None,
                    healthy=(p.ok if p is not None else None),
                    health_reason=(p.reason if p is not None else None),
                    has_model=has_model,
                    model_reason=model_reason,
                    loaded=loaded,
                    evictable_bytes=evictable,
                    free_bytes=free,
                    capacity_source=source,
                    oom_reason=oom_reason,
                    speed=self.speeds.get((cfg.name, key)),
                )
            )
        return snaps, tags_size, arch, valid_until

    def _capacity(self, cfg: BackendConfig, p: ProbeResult | None) -> tuple[int | None, str]:
        if cfg.max_memory_gb is not None:
            used = 0
            if p and p.loaded:
                used = sum(
                    (m.size_vram if cfg.kind == "gpu" else m.size) for m in p.loaded.values()
                )
            return max(0, int(cfg.max_memory_gb * 1024**3) - used), "max_memory_gb"
        if p is None:
            return None, "unknown"
        if cfg.kind == "gpu" and p.gpu_free is not None:
            return p.gpu_free, "nvml free VRAM"
        if cfg.kind == "cpu" and p.host_available is not None:
            return p.host_available, "MemAvailable"
        return None, p.capacity_source

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
            if not b.breaker.acquire(now):
                return False
            if b.breaker.state != before:
                self._version += 1
            b.in_flight += 1
            b.stats.requests += 1
            trial = b.breaker.state == "half_open"
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
                    self._learn(name, key, info, queued)
        if closed and self._shared is not None:
            self._shared.publish_breaker(name, SharedBreaker("closed"), self.clock())

    def _learn(self, name: str, key: str, info: Mapping[str, Any], queued: bool) -> None:
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
        self.answer_tokens[key] = ec if prev is None else prev + _DECAY * (ec - prev)
        before, after = _service_s(old), _service_s(new)
        if old is None or abs(after - before) > 0.1 * before:
            self._version += 1

    # ------------------------------------------------------------------ background trials
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
        b = self._by_name[name]
        br = b.breaker
        if br.state == "closed" or not self.background_trials:
            return False
        now = self.clock()
        with self._lock:
            fut = self.trial_futures.get(name)
            if fut is not None and not fut.done():
                return True
            if not br.would_allow(now):
                return False  # still cooling down: the plan skips it anyway
            before = br.state
            if not br.acquire(now):
                return True
            if br.state != before:
                self._version += 1
            key = self._keys.get(model) or normalize_model_name(model)
        if self._shared is not None and self._shared.acquire(name, now, trial=True) is False:
            with self._lock:
                br.release()  # another worker holds the fleet's trial
                self._version += 1
            return True
        self.trial_futures[name] = self._pool().submit(self._run_trial, b, key)
        logger.info("trial call of %s runs in the background", name)
        return True

    def _run_trial(self, b: BackendRuntime, key: str) -> bool:
        """One-token chat on ``b`` with the call's first-token deadline; feeds the breaker."""
        name = b.config.name
        deadline, _ = self.first_token_deadline(name, key)
        t = b.config.timeouts
        first = deadline if deadline is not None else t.first_token
        ok = False
        missing = False
        try:
            r = self._http(b).post(
                "/api/chat",
                json={
                    "model": key,
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": False,
                    "options": {"num_predict": 1},
                },
                timeout=httpx.Timeout(first, connect=t.connect),
            )
            # The server answered: 2xx, or a 4xx about the request (404: model not there).
            ok = r.status_code < 500
            missing = r.status_code == 404
        except Exception as exc:
            logger.info("background trial of %s failed: %s", name, b.config.scrub(str(exc)))
        now = self.clock()
        with self._lock:
            self._version += 1
            if ok:
                b.breaker.record_success()
                b.answered_at = now
                if missing:
                    b.missing[key] = now + self.missing_ttl
            else:
                b.breaker.record_failure(now)
            br = b.breaker
            shared = SharedBreaker(br.state, br.failures, br.opened_at, br.cooldown)
        if self._shared is not None:
            self._shared.release(name, now)
            self._shared.publish_breaker(name, shared, now)
        logger.info("background trial of %s: %s", name, "ok" if ok else "failed")
        return ok

    def attempt_limits(self, name: str, model: str) -> tuple[float | None, str, bool]:
        """:meth:`first_token_deadline` for an attempt starting now on ``name``, and whether
        it starts behind other calls of this router on every slot (it will wait). One call
        per attempt on the hot path."""
        b = self._by_name[name]
        deadline, note = self.first_token_deadline(name, model)
        return deadline, note, b.in_flight > b.config.max_parallel

    # ------------------------------------------------------------------ speed calibration
    def calibrate(
        self,
        names: Iterable[str],
        model: str,
        *,
        num_ctx: int | None = None,
        answer_tokens: float = 200.0,
    ) -> list[str]:
        """Measure the speed of ``model`` on each backend of ``names`` that has no measure
        yet, with one small chat request in the background; returns where one started.

        Why: before any measurement, plans order backends by the speed prior (a GPU ten
        times faster than a CPU). When the prior keeps calls off a backend, no real call
        ever measures it, so the prior would decide for ever, and two servers that are in
        fact alike would never share a burst. The planner names such backends
        (``RoutePlan.unmeasured``); a request of :data:`CALIBRATION_TOKENS` tokens there
        returns Ollama's timings, which feed the same learned averages as real calls (the
        short answer's length teaches nothing), and the plans are re-made.

        Bounded: once per (backend, model) per ``calibration_cooldown`` seconds, at most one
        in flight per backend, only where the circuit is closed, the last probe succeeded
        and a slot is free (``max_parallel``, fleet-wide in fleet mode). The request holds
        that slot: it counts in flight, so plans see it. Its outcome never moves the breaker
        and never counts as a user call. ``answer_tokens``: the answer length to assume
        while no real answer of the model was seen (the prior's)."""
        if not self.calibrate_speeds:
            return []
        key = self._keys.get(model) or normalize_model_name(model)
        now = self.clock()
        started: list[str] = []
        with self._lock:
            for name in names:
                b = self._by_name.get(name)
                if b is None or (name, key) in self.speeds:
                    continue
                at = self._calibrated_at.get((name, key))
                if at is not None and now - at < self.calibration_cooldown:
                    continue
                fut = self.calibration_futures.get(name)
                if fut is not None and not fut.done():
                    continue
                p = b.probe
                if b.breaker.state != "closed" or p is None or not p.ok:
                    continue
                if b.load >= b.config.max_parallel:
                    continue
                if len(self._calibrated_at) >= 1024:  # bounded, whatever models callers name
                    self._calibrated_at.pop(next(iter(self._calibrated_at)))
                self._calibrated_at[(name, key)] = now
                b.in_flight += 1  # the slot it holds: released when the request ends
                b.calibrations += 1
                self._version += 1
                fut = self._pool().submit(self._run_calibration, b, key, num_ctx, answer_tokens)
                # Cancelled before it ran (close()): nothing else would free its slot.
                fut.add_done_callback(functools.partial(self._calibration_cancelled, b))
                self.calibration_futures[name] = fut
                started.append(name)
        for name in started:
            logger.info("speed of %s on %s unmeasured: calibrating in the background", key, name)
        return started

    def _calibration_cancelled(
        self, b: BackendRuntime, fut: concurrent.futures.Future[bool]
    ) -> None:
        if fut.cancelled():
            self._end_calibration(b)

    def _end_calibration(self, b: BackendRuntime, *, fleet: bool = False) -> None:
        with self._lock:
            b.in_flight -= 1
            self._version += 1
        if fleet and self._shared is not None:
            self._shared.release(b.config.name, self.clock())

    def _run_calibration(
        self, b: BackendRuntime, key: str, num_ctx: int | None, answer_tokens: float
    ) -> bool:
        """The calibration request (see :meth:`calibrate`); True when a speed was learned."""
        name = b.config.name
        sh = self._shared
        counted = False
        learned = False
        try:
            if sh is not None:
                self.sync_speeds()  # another worker may have measured it already
                if (name, key) in self.speeds:
                    return False
                counted = sh.acquire(name, self.clock(), trial=False) is not None
            info = self._calibration_request(b, key, num_ctx)
            now = self.clock()
            with self._lock:
                b.answered_at = now
                b.warm[key] = now
                old = self.speeds.get((name, key))
                known = self.answer_tokens.get(key) or (old.output_tokens if old else None)
                new = learn_speed(old, info, answer_tokens=known or answer_tokens)
                if new is not None and new is not old:
                    self.speeds[(name, key)] = new
                    learned = True
                else:
                    b.calibration_failures += 1
            if learned:
                logger.info(
                    "calibrated %s on %s: %.1f tokens/s, first token %.3fs",
                    key,
                    name,
                    new.tokens_per_s if new else 0.0,
                    new.first_token_s if new else 0.0,
                )
            else:
                logger.info("calibration of %s on %s: no timings in the answer", key, name)
        except Exception as exc:
            # A failed calibration is no evidence against the server: user calls and probes
            # judge its health; this only leaves the speed unmeasured until the cooldown.
            with self._lock:
                b.calibration_failures += 1
                if isinstance(exc, _Missing):
                    b.missing[key] = self.clock() + self.missing_ttl
            logger.info(
                "calibration of %s on %s failed: %s",
                key,
                name,
                b.config.scrub(f"{type(exc).__name__}: {exc}")[:200],
            )
        finally:
            self._end_calibration(b, fleet=counted)
        return learned

    def _calibration_request(
        self, b: BackendRuntime, key: str, num_ctx: int | None
    ) -> Mapping[str, Any]:
        """Stream a short chat from ``b`` and return its final chunk (Ollama's timings)."""
        t = b.config.timeouts
        deadline, _ = self.first_token_deadline(b.config.name, key)
        first = deadline if deadline is not None else t.first_token
        options: dict[str, Any] = {"num_predict": CALIBRATION_TOKENS}
        if num_ctx is not None and num_ctx != DEFAULT_NUM_CTX:
            options["num_ctx"] = num_ctx  # as the calls send it: no reload for a new context
        body = {
            "model": key,
            "messages": [{"role": "user", "content": CALIBRATION_PROMPT}],
            "stream": True,
            "options": options,
        }
        # Per read: the first chunk may wait for a load; later ones come a token apart.
        timeout = httpx.Timeout(first, connect=t.connect)
        with self._http(b).stream("POST", "/api/chat", json=body, timeout=timeout) as r:
            if r.status_code == 404:
                raise _Missing(f"model {key!r} not found (404)")
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.strip():
                    continue
                chunk = json.loads(line)
                if not isinstance(chunk, dict):
                    raise ValueError("malformed chat chunk")
                if chunk.get("error"):
                    raise RuntimeError(str(chunk["error"])[:200])
                if chunk.get("done"):
                    return chunk
        raise ValueError("the answer ended without a final chunk")

    def first_token_deadline(self, name: str, model: str) -> tuple[float | None, str]:
        """A short first-token deadline for a call on ``name`` when no load is coming, else
        ``(None, why)`` (the configured one applies).

        No load is coming when ``/api/ps`` lists the model there, or a call on it succeeded
        within ``warm_window`` seconds, and the server answered (a call or a probe) within
        that window. The deadline is ``warm_first_token_factor`` times the learned time to
        first token (the prior's before any call), at least ``warm_first_token`` seconds,
        never more than the configured one. With another call queued ahead on the last slot
        the long deadline stays: waiting for a slot is not a hang."""
        floor = self.warm_first_token
        if floor is None:
            return None, ""
        b = self._by_name[name]
        now = self.clock()
        window = self.warm_window
        at = b.answered_at
        if at is None or now - at > window:
            return None, "cold deadline: the server has not answered recently"
        key = self._keys.get(model) or normalize_model_name(model)
        p = b.probe
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
                b.breaker.record_failure(now)
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

    def _note_costs(
        self, req: RouteRequest, snaps: Sequence[BackendSnapshot], policy: RoutePolicy
    ) -> None:
        """Remember, per backend, the expected finish time of the last planned request with
        a free slot and the time each call queued ahead adds: the fleet's acquire re-checks
        spill-over on fresh counts with the same estimate the plan used (fleet mode)."""
        costs: dict[str, tuple[float, float]] = {}
        for sn in snaps:
            free = estimate_finish(replace(sn, in_flight=0), req, policy.prior)[0]
            one = estimate_finish(replace(sn, in_flight=sn.max_parallel), req, policy.prior)[0]
            costs[sn.name] = (free, max(0.0, one - free))
        self._costs = costs

    def sync_speeds(self) -> int:
        """Fleet mode: publish this worker's learned speeds and take the fleet's for every
        (backend, model) this worker has not measured yet, so a new worker starts with what
        the others learned. Runs off the hot path every ``speed_sync_s``. Returns how many
        estimates were taken."""
        sh = self._shared
        if sh is None:
            return 0
        with self._lock:
            mine = dict(self.speeds)
        fleet = sh.sync_speeds(mine, self.clock())
        if not fleet:
            return 0
        taken = 0
        with self._lock:
            for k, sp in fleet.items():
                if k[0] in self._by_name and k not in self.speeds:
                    self.speeds[k] = sp
                    taken += 1
            if taken:
                self._version += 1
        return taken

    def _apply_fleet_view(self, now: float) -> None:
        """Feed the fleet's shared state into this router's (fleet mode only)."""
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

    # ------------------------------------------------------------------ probes
    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        # A probe, a background trial (which may wait a whole first-token
                        # deadline) and a speed calibration per backend; threads start
                        # only when needed.
                        max_workers=max(3, 3 * len(self._backends)),
                        thread_name_prefix="contextharbor-probe",
                    )
        return self._executor

    def submit_background(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the router's worker threads (errors are logged, never raised)."""

        def run() -> None:
            try:
                fn()
            except Exception:  # pragma: no cover - background work must not crash
                logger.debug("background task failed", exc_info=True)

        self._pool().submit(run)

    def _schedule_stale(self, now: float, key: str) -> None:
        if now < self._next_probe_check and key in self._shows_checked:
            return  # hot path: every probe is fresh and this model's /api/show is known
        due = float("inf")
        all_shown = True
        for b in self._backends:
            p = b.probe
            if (p is None or now - p.at > self.probe_ttl) and b.probe_future is None:
                self._submit_probe(b)
            if p is not None:
                due = min(due, p.at + self.probe_ttl)
            else:
                due = now
            has_it = p is not None and p.ok and bool(p.models) and key in (p.models or {})
            shown = b.shows.get(key)
            if has_it and (shown is None or now - shown[0] > self.show_ttl):
                all_shown = False
                if key not in b.show_futures:
                    self._submit_show(b, key)
        self._next_probe_check = due
        if all_shown and due > now:
            if len(self._shows_checked) >= 1024:  # bounded, whatever models callers name
                self._shows_checked.clear()
            self._shows_checked.add(key)
        else:
            self._shows_checked.discard(key)

    def _submit_probe(self, b: BackendRuntime) -> concurrent.futures.Future[ProbeResult]:
        with self._lock:
            fut = b.probe_future
            if fut is not None and not fut.cancelled():
                return fut
            fut = self._pool().submit(self._run_probe, b)
            b.probe_future = fut
            return fut

    def _submit_show(self, b: BackendRuntime, key: str) -> None:
        with self._lock:
            if key in b.show_futures:
                return
            b.show_futures[key] = self._pool().submit(self._run_show, b, key)

    def _http(self, b: BackendRuntime) -> httpx.Client:
        with self._lock:
            return self._http_locked(b)

    def _http_locked(self, b: BackendRuntime) -> httpx.Client:
        if b.client is None:
            cfg = b.config
            kw = {k: v for k, v in cfg.client_kwargs.items() if k != "async_transport"}
            kw["verify"] = shared_ssl_context(
                kw.get("verify", cfg.verify),
                kw.pop("cert", None),
                tls=not cfg.plain_url.startswith("http://"),
            )
            # Credentials travel in headers, never in the URL: httpx and httpcore log
            # request URLs (INFO/DEBUG), and their error texts quote them.
            b.client = httpx.Client(
                base_url=cfg.plain_url,
                headers=cfg.request_headers,
                timeout=httpx.Timeout(
                    cfg.timeouts.probe, connect=min(cfg.timeouts.connect, cfg.timeouts.probe)
                ),
                **kw,
            )
        return b.client

    def _run_probe(self, b: BackendRuntime) -> ProbeResult:
        sh = self._shared
        if sh is not None:
            # Fleet mode: one probe per backend per TTL for the whole fleet.
            kind, shared = sh.probe_decision(b.config.name, self.clock(), self.probe_ttl)
            if kind != "probe" and (shared is not None or b.probe is not None):
                res = shared if shared is not None else b.probe
                assert res is not None
                self._store_probe(b, res)
                return res
        res = self._probe_http(b)
        if sh is not None:
            sh.publish_probe(b.config.name, res, self.clock(), self.probe_ttl)
        return res

    def _store_probe(self, b: BackendRuntime, res: ProbeResult) -> None:
        """Make ``res`` what the router knows of ``b`` (from its own probe or the fleet's)
        and act on its evidence; plans made before it are dropped."""
        with self._lock:
            b.probe = res
            b.probe_future = None
            self._version += 1
            self._next_probe_check = float("-inf")
            self._apply_probe_evidence(b, res)
        self._publish_pending(b)

    @staticmethod
    def _optional(b: BackendRuntime, c: httpx.Client, path: str) -> list[Mapping[str, Any]] | None:
        """The ``models`` list of an optional probe endpoint, or None when it fails."""
        try:
            return _json_list(c.get(path), "models")
        except Exception as exc:
            logger.debug(
                "optional probe %s on %s failed (left unknown): %s",
                path,
                b.config.name,
                b.config.scrub(f"{type(exc).__name__}: {exc}")[:200],
            )
            return None

    def _probe_http(self, b: BackendRuntime) -> ProbeResult:
        t0 = time.perf_counter()
        res: ProbeResult
        try:
            c = self._http(b)
            r = c.get("/api/version")
            if r.status_code == 404:  # a gateway without /api/version: Ollama's "/" works
                r = c.get("/")
            r.raise_for_status()
            version = (
                r.json().get("version")
                if r.headers.get("content-type", "").startswith("application/json")
                else None
            )
            # Only the health answer above decides "down". /api/tags and /api/ps are
            # optional (older servers, gateways exposing part of the API): failing, they
            # leave the model list or the loaded set unknown, not the server unusable.
            tags = self._optional(b, c, "/api/tags")
            ps = self._optional(b, c, "/api/ps")
            res = ProbeResult(
                True,
                self.clock(),
                (time.perf_counter() - t0) * 1000,
                version=version,
                models=_parse_tags(tags) if tags is not None else None,
                loaded=_parse_loaded(ps) if ps is not None else None,
                digests=_parse_digests(tags) if tags is not None else None,
            )
            self._read_capacity(b.config, res)
        except Exception as exc:  # a probe never raises into callers
            res = ProbeResult(
                False,
                self.clock(),
                (time.perf_counter() - t0) * 1000,
                reason=b.config.scrub(f"{type(exc).__name__}: {exc}")[:300],
            )
        self._store_probe(b, res)
        if res.ok:
            logger.debug(
                "probe %s ok in %.1f ms: %d models, %d loaded",
                b.config.name,
                res.latency_ms,
                len(res.models or {}),
                len(res.loaded or {}),
            )
        else:
            logger.info("probe %s failed: %s", b.config.name, res.reason)
        return res

    def _publish_pending(self, b: BackendRuntime) -> None:
        """Hand a breaker change decided under the lock to the fleet (outside the lock)."""
        pending, b.publish = b.publish, None
        if pending is not None and self._shared is not None:
            self._shared.publish_breaker(b.config.name, pending, self.clock())

    def _apply_probe_evidence(self, b: BackendRuntime, res: ProbeResult) -> None:
        """What a probe proves about learned failures (called under the lock): a server that
        answers may take its trial call now; a model /api/tags lists is no longer missing."""
        if not res.ok:
            b.breaker.probe_failed()
            return
        b.answered_at = res.at
        if b.breaker.probe_succeeded():
            logger.info("probe %s ok: circuit half-open, next call is its trial", b.config.name)
            if self._shared is not None:  # published after the lock; keeps the fleet's
                br = b.breaker  # view from re-opening it
                b.publish = SharedBreaker("half_open", br.failures, br.opened_at, br.cooldown)
        if b.missing and res.models is not None:
            for key in [k for k in b.missing if k in res.models]:
                del b.missing[key]

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
            self._next_probe_check = float("-inf")
        if self._shared is not None:  # closes the circuits fleet-wide too
            for b in targets:
                self._shared.publish_breaker(b.config.name, SharedBreaker("closed"), self.clock())

    def _read_capacity(self, cfg: BackendConfig, res: ProbeResult) -> None:
        if not cfg.is_local:
            res.capacity_source = "remote (set max_memory_gb)"
            return
        if cfg.kind == "gpu":
            if self._nvml_reader is None:
                from langchain_contextharbor.gpu import NvmlReader

                self._nvml_reader = NvmlReader(self._nvml_arg)
            snap = self._nvml_reader.read()
            res.gpu_free = snap.total_free()
            res.gpu_total = snap.total()
            res.capacity_source = snap.source
        else:
            if self._host_memory is not None:
                res.host_available = self._host_memory()
            else:
                from langchain_contextharbor.gpu import read_host_memory_available

                res.host_available = read_host_memory_available()
            res.capacity_source = "MemAvailable"

    def _run_show(self, b: BackendRuntime, key: str) -> ArchInfo | None:
        arch: ArchInfo | None = None
        try:
            r = self._http(b).post("/api/show", json={"model": key})
            r.raise_for_status()
            arch = ArchInfo.from_show(r.json())
        except Exception as exc:
            logger.debug("show %s on %s failed: %s", key, b.config.name, exc)
        with self._lock:
            if key not in b.shows and len(b.shows) >= 512:
                b.shows.pop(next(iter(b.shows)))  # bounded: the oldest entry goes
            b.shows[key] = (self.clock(), arch)
            b.show_futures.pop(key, None)
            self._version += 1
            self._next_probe_check = float("-inf")
        return arch

    def _show_futures(self, model: str) -> list[concurrent.futures.Future[ArchInfo | None]]:
        """Start (or join) /api/show of ``model`` on every backend known to have it."""
        key = normalize_model_name(model)
        for b in self._backends:
            p = b.probe
            if p and p.ok and p.models and key in p.models:
                self._submit_show(b, key)
        return [f for b in self._backends if (f := b.show_futures.get(key)) is not None]

    def refresh(self, model: str | None = None) -> dict[str, ProbeResult]:
        """Probe every backend now (sharing any probe already running) and wait."""
        futs = {b.config.name: self._submit_probe(b) for b in self._backends}
        out = {n: f.result() for n, f in futs.items()}
        for f in self._show_futures(model) if model else []:
            f.result()
        return out

    async def arefresh(self, model: str | None = None) -> dict[str, ProbeResult]:
        """The async twin of :meth:`refresh`; it awaits the same shared futures."""
        futs = {b.config.name: self._submit_probe(b) for b in self._backends}
        out = {n: await asyncio.wrap_future(f) for n, f in futs.items()}
        for f in self._show_futures(model) if model else []:
            await asyncio.wrap_future(f)
        return out

    def close(self) -> None:
        """Stop the probe threads and close the probe clients. The router stays usable:
        a later call or ``refresh()`` starts them again."""
        with self._lock:
            executor, self._executor = self._executor, None
            clients = [b.client for b in self._backends if b.client is not None]
            for b in self._backends:
                b.client = None
                b.probe_future = None
                b.show_futures.clear()
            self._next_probe_check = float("-inf")
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for c in clients:
            c.close()
        if self._shared is not None:
            self._shared.close()  # fleet mode: queued lease releases are sent first

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        out: dict[str, Any] = {}
        with self._lock:
            for b in self._backends:
                d = b.stats.as_dict()
                d["circuit"] = b.breaker.state
                d["consecutive_failures"] = b.breaker.failures
                ra = b.breaker.retry_at()
                d["retry_in_s"] = round(ra - now, 3) if ra is not None else None
                d["in_flight"] = b.in_flight
                if self._shared is not None:
                    d["fleet_in_flight"] = b.fleet.in_flight if b.fleet is not None else None
                d["url"] = b.config.safe_url
                d["speeds"] = {
                    m: {
                        "tokens_per_s": round(sp.tokens_per_s, 2),
                        "first_token_s": round(sp.first_token_s, 4),
                        "answer_tokens": round(sp.output_tokens, 1),
                        "load_s": None if sp.load_s is None else round(sp.load_s, 3),
                        "samples": sp.samples,
                    }
                    for (n, m), sp in self.speeds.items()
                    if n == b.config.name
                }
                d["calibrations"] = {
                    "sent": b.calibrations,
                    "failed": b.calibration_failures,
                }
                d["kind"] = b.config.kind
                out[b.config.name] = d
        return out

    def request_probe(self, name: str) -> concurrent.futures.Future[ProbeResult]:
        return self._submit_probe(self.get(name))

"""The router's probes: its HTTP clients, its thread pool, and the waits for evidence.

Why a part of its own: probing is the router's I/O (``/api/version``, ``/api/tags``,
``/api/ps``, ``/api/show`` per model, NVML and ``/proc/meminfo`` readings) and the only
thing a call ever waits for before planning. The :class:`Prober` owns the probe clients
(built by :func:`~langchain_contextharbor._transport.probe_client`, the package's one
builder), the worker threads, and the bookkeeping of what is due; it writes what it learns
into the rows of the :class:`~langchain_contextharbor._table.BackendTable` under the
table's lock. Parsing the replies is pure code in :mod:`~langchain_contextharbor._facts`.

Probes run on a small thread pool, at most one at a time per backend; sync callers wait on
the same ``concurrent.futures.Future`` that async callers await, so both share a probe. On
the hot path a stale cache only *schedules* a refresh (:meth:`Prober.schedule_stale`). The
one wait is explicit and comes before a plan (:meth:`Prober.wait_for_evidence`, or the
async :meth:`Prober.await_evidence`): the very first plan of a router has no facts at all
(is the model on the GPU server? how big is it?), and scripts, notebooks and CLI tools
make *only* first calls, so it waits for the backends' first probes, bounded by
``first_probe_wait`` seconds of real time (a loopback probe takes about a millisecond).
The same budget covers the ``/api/show`` of the first calls' model: without it the first
plan sizes the KV cache by a heuristic (about four times too big for a small modern model),
and the first call would be routed differently from every later one and from
``contextharbor route``. Once every backend has been probed, or the budget is spent, no
call waits again unless every backend is closed off (then a recheck probe, at most one per
``recheck_interval``) or it asks to (``refresh()``).

A probe first asks ``/api/version`` and accepts only Ollama's answer (``{"version":
"x.y.z"}``, or ``Ollama is running`` on ``/`` from a gateway without that path): anything
else makes the backend unhealthy, with a reason that says what answered instead. Its
verdict is published at once (``health_future``), before ``/api/tags`` and ``/api/ps``,
so a call waiting on a backend with no evidence yet learns "up" or "down" as early as the
probe does. Every reply is read with a byte bound and validated before use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from langchain_contextharbor._facts import (
    ProbeResult,
    decode_reply,
    models_list,
    parse_digests,
    parse_loaded,
    parse_tags,
    read_version,
)
from langchain_contextharbor._table import BackendRuntime, BackendTable, Clock
from langchain_contextharbor._transport import content_type, probe_client
from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.fleet import SharedBreaker
from langchain_contextharbor.sizing import ArchInfo, normalize_model_name

__all__ = ["Prober"]

logger = logging.getLogger("langchain_contextharbor")

Futures = list[concurrent.futures.Future[ProbeResult]]


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


REPLY_LIMIT = 8 * 1024 * 1024
"""Bytes of one ``/api/tags``, ``/api/ps`` or ``/api/show`` reply read at most (thousands of
models fit; a server that streams without end does not)."""
VERSION_LIMIT = 64 * 1024
"""Bytes of a ``/api/version`` (or ``/``) reply read at most."""


def _get(c: httpx.Client, method: str, path: str, limit: int, **kw: Any) -> tuple[int, str, bytes]:
    """Status, media type and body of one request, the body bounded to ``limit`` bytes."""
    with c.stream(method, path, **kw) as r:
        buf = bytearray()
        for chunk in r.iter_bytes():
            buf += chunk
            if len(buf) > limit:
                raise ValueError(f"{path} reply over {limit} bytes")
        return r.status_code, content_type(r.headers), bytes(buf)


def _json(c: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    """The decoded JSON of a 2xx reply (bounded, validated), or an exception saying why not."""
    status, ctype, body = _get(c, method, path, REPLY_LIMIT, **kw)
    if status >= 400:
        raise ValueError(f"{path}: HTTP {status}")
    if ctype != "application/json":
        raise ValueError(f"{path}: HTTP {status}, {ctype or 'no content type'} is not JSON")
    return decode_reply(body, path)


def _json_list(c: httpx.Client, path: str, key: str) -> list[Mapping[str, Any]]:
    return models_list(_json(c, "GET", path), path, key)


def _set_verdict(b: BackendRuntime, verdict: str | None) -> None:
    f = b.health_future
    if f is not None and not f.done():
        try:
            f.set_result(verdict)
        except concurrent.futures.InvalidStateError:  # set by another thread meanwhile
            pass


class _NotOllama(Exception):
    """The server's health answer is not Ollama's (the message says what it was)."""


def _optional(b: BackendRuntime, c: httpx.Client, path: str) -> list[Mapping[str, Any]] | None:
    """The ``models`` list of an optional probe endpoint, or None when it fails."""
    try:
        return _json_list(c, path, "models")
    except Exception as exc:
        logger.debug(
            "optional probe %s on %s failed (left unknown): %s",
            path,
            b.config.name,
            b.config.scrub(f"{type(exc).__name__}: {exc}")[:200],
        )
        return None


def _ask(b: BackendRuntime, c: httpx.Client, clock: Clock, t0: float) -> ProbeResult:
    """The requests of one probe of ``b`` and their reading (capacity is the prober's:
    it holds the NVML reader); raises when the server is down or not Ollama."""
    status, ctype, body = _get(c, "GET", "/api/version", VERSION_LIMIT)
    root = None
    if status == 404:  # a gateway without /api/version: Ollama's "/" works
        rs, _, rbody = _get(c, "GET", "/", VERSION_LIMIT)
        root = (rs, rbody)
    version, bad = read_version(status, ctype, body, root)
    if bad is not None:
        raise _NotOllama(bad)
    _set_verdict(b, None)  # up: a call waiting on this evidence may go now
    # Only the health answer above decides "down". /api/tags and /api/ps are
    # optional (older servers, gateways exposing part of the API): failing, they
    # leave the model list or the loaded set unknown, not the server unusable.
    tags = _optional(b, c, "/api/tags")
    ps = _optional(b, c, "/api/ps")
    return ProbeResult(
        True,
        clock(),
        (time.perf_counter() - t0) * 1000,
        version=version,
        models=parse_tags(tags) if tags is not None else None,
        loaded=parse_loaded(ps) if ps is not None else None,
        digests=parse_digests(tags) if tags is not None else None,
    )


def _failed(b: BackendRuntime, exc: Exception, clock: Clock, t0: float) -> ProbeResult:
    """The failed probe of ``b``, its reason saying what went wrong (credentials scrubbed)."""
    if isinstance(exc, _NotOllama):
        why = str(exc)
    elif isinstance(exc, httpx.TimeoutException):
        why = (
            f"{type(exc).__name__}: no answer within the probe deadline "
            f"{b.config.timeouts.probe:g}s (Timeouts.probe)"
        )
    else:
        why = f"{type(exc).__name__}: {exc}"
    return ProbeResult(
        False,
        clock(),
        (time.perf_counter() - t0) * 1000,
        reason=b.config.scrub(why)[:300],
    )


class Prober:
    """Probes, ``/api/show`` readings and the evidence waits of one router's table."""

    def __init__(
        self,
        table: BackendTable,
        *,
        nvml: Any = None,
        host_memory: Callable[[], int | None] | None = None,
    ) -> None:
        self._t = table
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._clients: dict[str, httpx.Client] = {}
        """backend name -> its probe client (built on first use, closed by close())."""
        self._nvml_arg = nvml
        self._nvml_reader: Any = None
        self._host_memory = host_memory
        self.primed = not table.background_probes or table.first_probe_wait <= 0
        """True once no call needs to wait for a first probe any more."""
        self._prime_deadline: float | None = None
        """perf_counter() time after which first calls stop waiting (set by the first)."""
        self.unstuck_version = -1
        """Table version at which some backend was known usable (no recheck needed)."""
        self.next_check = float("-inf")
        """Clock time of the next stale probe; before it only new models need a look."""
        self.shows_checked: set[str] = set()
        """Models whose /api/show is fresh everywhere they are (bounded)."""
        self._prime_keys: set[str] = set()
        """Models the first calls asked for: their /api/show is part of the first wait."""

    # ------------------------------------------------------------------ threads, clients
    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            with self._t._lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        # A probe, a background trial (which may wait a whole first-token
                        # deadline) and a speed calibration per backend; threads start
                        # only when needed.
                        max_workers=max(3, 3 * len(self._t.backends)),
                        thread_name_prefix="contextharbor-probe",
                    )
        return self._executor

    def submit_background(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the worker threads (errors are logged, never raised)."""

        def run() -> None:
            try:
                fn()
            except Exception:  # pragma: no cover - background work must not crash
                logger.debug("background task failed", exc_info=True)

        self.pool().submit(run)

    def http(self, b: BackendRuntime) -> httpx.Client:
        """The probe client of ``b`` (also used by trials and calibration)."""
        with self._t._lock:
            c = self._clients.get(b.config.name)
            if c is None:
                c = self._clients[b.config.name] = probe_client(b.config)
            return c

    def changed(self) -> None:
        """What is known changed (a probe, a reset): look at every backend again."""
        self.next_check = float("-inf")

    def close(self) -> None:
        """Stop the threads and close the clients; both start again when next needed."""
        t = self._t
        with t._lock:
            executor, self._executor = self._executor, None
            clients, self._clients = list(self._clients.values()), {}
            for b in t.backends:
                b.probe_future = None
                b.show_futures.clear()
                _set_verdict(b, "the router was closed")
            self.next_check = float("-inf")
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for c in clients:
            c.close()

    # ------------------------------------------------------------------ scheduling
    def schedule_stale(self, now: float, key: str) -> None:
        """Submit a probe for every stale backend and an /api/show of normalized model
        ``key`` where it is due. Never waits."""
        if now < self.next_check and key in self.shows_checked:
            return  # hot path: every probe is fresh and this model's /api/show is known
        t = self._t
        if not self.primed and len(self._prime_keys) < 8:
            self._prime_keys.add(key)
        due = float("inf")
        all_shown = True
        for b in t.backends:
            p = b.probe
            if (p is None or now - p.at > t.probe_ttl) and b.probe_future is None:
                self.submit_probe(b)
            if p is not None:
                due = min(due, p.at + t.probe_ttl)
            else:
                due = now
            has_it = p is not None and p.ok and bool(p.models) and key in (p.models or {})
            shown = b.shows.get(key)
            if has_it and (shown is None or now - shown[0] > t.show_ttl):
                all_shown = False
                if key not in b.show_futures:
                    self._submit_show(b, key)
        self.next_check = due
        if all_shown and due > now:
            if len(self.shows_checked) >= 1024:  # bounded, whatever models callers name
                self.shows_checked.clear()
            self.shows_checked.add(key)
        else:
            self.shows_checked.discard(key)

    def submit_probe(self, b: BackendRuntime) -> concurrent.futures.Future[ProbeResult]:
        """Start a probe of ``b``, or join the one running."""
        with self._t._lock:
            fut = b.probe_future
            if fut is not None and not fut.cancelled():
                return fut
            if b.health_future is None or b.health_future.done():
                b.health_future = concurrent.futures.Future()
            b.probe_started = time.perf_counter()
            fut = self.pool().submit(self._run_probe, b)
            b.probe_future = fut
            return fut

    def _submit_show(self, b: BackendRuntime, key: str) -> None:
        with self._t._lock:
            if key in b.show_futures:
                return
            b.show_futures[key] = self.pool().submit(self._run_show, b, key)

    def show_futures(self, model: str) -> list[concurrent.futures.Future[ArchInfo | None]]:
        """Start (or join) /api/show of ``model`` on every backend known to have it."""
        key = normalize_model_name(model)
        backends = self._t.backends
        for b in backends:
            p = b.probe
            if p and p.ok and p.models and key in p.models:
                self._submit_show(b, key)
        return [f for b in backends if (f := b.show_futures.get(key)) is not None]

    # ------------------------------------------------------------------ probing
    def _run_probe(self, b: BackendRuntime) -> ProbeResult:
        t = self._t
        sh = t._shared
        if sh is not None:
            # Fleet mode: one probe per backend per TTL for the whole fleet.
            kind, shared = sh.probe_decision(b.config.name, t.clock(), t.probe_ttl)
            if kind != "probe" and (shared is not None or b.probe is not None):
                res = shared if shared is not None else b.probe
                assert res is not None
                self._store_probe(b, res)
                return res
        res = self._probe_http(b)
        if sh is not None:
            sh.publish_probe(b.config.name, res, t.clock(), t.probe_ttl)
        return res

    def _store_probe(self, b: BackendRuntime, res: ProbeResult) -> None:
        """Make ``res`` what the table knows of ``b`` (from this worker's probe or the
        fleet's) and act on its evidence; plans made before it are dropped."""
        t = self._t
        with t._lock:
            b.probe = res
            b.probe_future = None
            t._version += 1
            self.next_check = float("-inf")
            self._apply_evidence(b, res)
            _set_verdict(b, None if res.ok else (res.reason or "probe failed"))
        t.publish_pending(b)

    def _apply_evidence(self, b: BackendRuntime, res: ProbeResult) -> None:
        """What a probe proves about learned failures (called under the lock): a server that
        answers may take its trial call now; a model /api/tags lists is no longer missing."""
        if not res.ok:
            b.breaker.probe_failed()
            return
        b.answered_at = res.at
        if b.breaker.probe_succeeded():
            logger.info("probe %s ok: circuit half-open, next call is its trial", b.config.name)
            if self._t._shared is not None:  # published after the lock; keeps the fleet's
                br = b.breaker  # view from re-opening it
                b.publish = SharedBreaker("half_open", br.failures, br.opened_at, br.cooldown)
        if b.missing and res.models is not None:
            for key in [k for k in b.missing if k in res.models]:
                del b.missing[key]

    def _probe_http(self, b: BackendRuntime) -> ProbeResult:
        clock = self._t.clock
        t0 = time.perf_counter()
        res: ProbeResult
        try:
            res = _ask(b, self.http(b), clock, t0)
            self._read_capacity(b.config, res)
        except Exception as exc:  # a probe never raises into callers
            res = _failed(b, exc, clock, t0)
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
            arch = ArchInfo.from_show(_json(self.http(b), "POST", "/api/show", json={"model": key}))
        except Exception as exc:
            logger.debug("show %s on %s failed: %s", key, b.config.name, exc)
        t = self._t
        with t._lock:
            if key not in b.shows and len(b.shows) >= 512:
                b.shows.pop(next(iter(b.shows)))  # bounded: the oldest entry goes
            b.shows[key] = (t.clock(), arch)
            b.show_futures.pop(key, None)
            t._version += 1
            self.next_check = float("-inf")
        return arch

    # ------------------------------------------------------------------ evidence waits
    def _first_probes(self) -> tuple[Futures, float]:
        """The first probes (or, once they are in, the first calls' ``/api/show``) a call
        should wait for, and for how long (seconds)."""
        t = self._t
        now = time.perf_counter()
        with t._lock:
            if self._prime_deadline is None:
                self._prime_deadline = now + t.first_probe_wait
            left = self._prime_deadline - now
            if t.background_probes:
                for b in t.backends:
                    if b.probe is None and b.probe_future is None:
                        self.submit_probe(b)
            unprobed = [b for b in t.backends if b.probe is None]
            shows = self._first_shows() if left > 0 else []
            if left <= 0 or (not unprobed and not shows):
                self.primed = True
                return [], 0.0
            futs: list[concurrent.futures.Future[Any]] = [
                b.probe_future for b in unprobed if b.probe_future is not None
            ]
            return futs + shows, left

    def _first_shows(self) -> list[concurrent.futures.Future[Any]]:
        """Start (or join) the ``/api/show`` of the first calls' models where a probe
        found them and none was read yet; the ones still running (under the lock)."""
        out: list[concurrent.futures.Future[Any]] = []
        for key in self._prime_keys:
            for b in self._t.backends:
                p = b.probe
                if p is None or not p.ok or not p.models or key not in p.models:
                    continue
                if key not in b.shows:
                    self._submit_show(b, key)
                f = b.show_futures.get(key)
                if f is not None and not f.done():
                    out.append(f)
        return out

    def _recheck(self, now: float) -> Futures:
        """Probe the backends a call cannot use (at most one probe each per
        ``recheck_interval``), so a call does not fail on an outage that is already over."""
        t = self._t
        futs = []
        with t._lock:
            for b in t.backends:
                if b.breaker.would_allow(now) and (b.probe is None or b.probe.ok):
                    continue
                fut = b.probe_future
                if fut is None and (b.probe is None or now - b.probe.at >= t.recheck_interval):
                    fut = self.submit_probe(b)
                if fut is not None:
                    futs.append(fut)
        return futs

    def _evidence(self) -> tuple[list[concurrent.futures.Future[Any]], float, bool]:
        """Probes worth waiting for before planning, the budget, and whether they were first
        probes. Cheap when nothing is pending: a flag and one breaker check per backend."""
        t = self._t
        if not self.primed:
            futs, left = self._first_probes()
            if futs:
                return futs, left, True
        if self.unstuck_version != t._version and t.background_probes:
            # "Some backend is usable" only changes with the table's state (a version bump),
            # never with time alone: check once per version, not on every call.
            now = t.clock()
            version = t._version
            stuck = True
            for b in t.backends:
                if b.breaker.would_allow(now) and (b.probe is None or b.probe.ok):
                    stuck = False
                    break
            if not stuck:
                self.unstuck_version = version
            elif t.first_probe_wait > 0:
                return self._recheck(now), t.first_probe_wait, False
        return [], 0.0, False

    def wait_for_evidence(self) -> None:
        """Block until the probes a plan needs are in (first probes of a fresh router and
        the first calls' ``/api/show`` where each probe found the model, or a recheck of
        backends that are all closed off), bounded by ``first_probe_wait``. Inside an event
        loop it never blocks (async calls use :meth:`await_evidence`)."""
        futs, left, first = self._evidence()
        if not futs or _in_event_loop():
            return
        if not first:
            concurrent.futures.wait(futs, timeout=left)
            return
        while futs:  # each answer may start an /api/show; each turn ends one wait
            concurrent.futures.wait(futs, timeout=left, return_when="FIRST_COMPLETED")
            futs, left = self._first_probes()

    async def await_evidence(self) -> None:
        """The async twin of :meth:`wait_for_evidence`: awaits, never blocks the loop."""
        futs, left, first = self._evidence()
        if not futs:
            return
        if not first:
            await asyncio.wait([asyncio.wrap_future(f) for f in futs], timeout=left)
            return
        while futs:  # each answer may start an /api/show; each turn ends one wait
            await asyncio.wait(
                [asyncio.wrap_future(f) for f in futs], timeout=left, return_when="FIRST_COMPLETED"
            )
            futs, left = self._first_probes()

    def refresh(self, model: str | None = None) -> dict[str, ProbeResult]:
        """Probe every backend now (sharing any probe already running) and wait."""
        futs = {b.config.name: self.submit_probe(b) for b in self._t.backends}
        out = {n: f.result() for n, f in futs.items()}
        for f in self.show_futures(model) if model else []:
            f.result()
        return out

    async def arefresh(self, model: str | None = None) -> dict[str, ProbeResult]:
        """The async twin of :meth:`refresh`; it awaits the same shared futures."""
        futs = {b.config.name: self.submit_probe(b) for b in self._t.backends}
        out = {n: await asyncio.wrap_future(f) for n, f in futs.items()}
        for f in self.show_futures(model) if model else []:
            await asyncio.wrap_future(f)
        return out

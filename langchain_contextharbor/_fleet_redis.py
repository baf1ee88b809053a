"""The Redis implementation of :class:`~langchain_contextharbor.fleet.SharedState`.

Imported only when fleet mode is asked for (``shared_state="redis://..."`` or
``CONTEXTHARBOR_REDIS_URL``); needs ``pip install 'langchain-contextharbor[fleet]'``.

Three parts (issue 16: one job each): the key layout, the Lua scripts, the value encoding
and the connection with its failure policy are :mod:`~langchain_contextharbor._fleet_wire`
(its docstring draws the layout: every key under ``contextharbor:<namespace>:``, backends by
name); this worker's leases and trials, the release sender, the renewer and the releases
kept through an outage are :mod:`~langchain_contextharbor._fleet_leases`; this module is the
facade that composes them into the protocol, and owns the view (counts, and the details read
again on a version change or once the earliest expiry among them has passed) and the
breaker, mark, probe and speed exchanges.

Per call: one round trip to acquire (a Lua script: trial claim, fleet-wide slot check,
lease) on the caller's thread, and one to release, sent by a background thread (releases
that queue up go in one pipeline; the local view drops the lease at once); both replies
carry every backend's count and ``ver``, so a plan
made within ``view_max_age`` (2 ms) of the last reply needs no round trip of its own (the
acquire re-checks the slot anyway). Times cross processes on the fleet clock (``time.time``
unless injected); the router's clock is converted at the edge.

Failure policy: every Redis error (connection refused, timeout after ``timeout`` seconds,
anything) is caught; the store is then treated as absent for a back-off period (1 s,
doubling to 30 s, on the router's clock) during which the router decides locally. The first
error of an outage is logged once at WARNING, the recovery at INFO. The URL's credentials
never appear in logs, reprs or ``describe()``. Releases that cannot be sent (the store down,
or a round trip that failed) are kept and sent as soon as it answers again, and so is the
release of an acquire whose reply never came (a paused Redis runs it when it resumes):
without that, a lease released during an outage counted as load until it expired.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from langchain_contextharbor._facts import ProbeResult
from langchain_contextharbor._fleet_leases import FleetLeases
from langchain_contextharbor._fleet_wire import (
    BackendDetails,
    FleetKeys,
    RedisLink,
    breaker_fields,
    decode_details,
    mark_value,
    probe_from_json,
    probe_to_json,
    speeds_from_hash,
    speeds_to_hash,
    to_fleet,
    to_local,
)
from langchain_contextharbor.backends import redact_url
from langchain_contextharbor.errors import ConfigurationError
from langchain_contextharbor.fleet import (
    MarkKind,
    ProbeDecision,
    SharedBackend,
    SharedBreaker,
)
from langchain_contextharbor.routing import SpeedEstimate

__all__ = ["RedisSharedState"]


class RedisSharedState:
    """Shared router state in one Redis (see :mod:`~langchain_contextharbor._fleet_wire` for
    the layout)."""

    def __init__(
        self,
        url: str,
        backends: Sequence[str],
        *,
        max_parallel: Mapping[str, int] | None = None,
        clock: Callable[[], float] | None = None,
        namespace: str = "default",
        lease_ttl: float = 30.0,
        trial_ttl: float = 30.0,
        timeout: float = 0.25,
        view_max_age: float = 0.002,
        async_release: bool = True,
        client: Any = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                f"shared_state {redact_url(str(url))!r} must be a redis://, rediss:// or "
                "unix:// URL"
            )
        if not (lease_ttl > 0 and trial_ttl > 0 and timeout > 0):
            raise ConfigurationError("lease_ttl, trial_ttl and timeout must be > 0 seconds")
        self.safe_url = redact_url(url)
        self.fleet_clock = clock or time.time
        self.max_parallel = dict(max_parallel or {})
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.view_max_age = float(view_max_age)
        self._keys = FleetKeys(namespace, backends)
        self._link = RedisLink(url, timeout=timeout, client=client)
        self._leases = FleetLeases(
            self._link,
            self._keys,
            worker=self.worker,
            fleet_clock=self.fleet_clock,
            lease_ttl=float(lease_ttl),
            trial_ttl=float(trial_ttl),
            max_parallel=self.max_parallel,
            async_release=async_release,
        )
        self._link.on_recovery = self._leases.send_unsent
        self._details: dict[str, BackendDetails] = {}
        self._details_until = float("inf")
        """Router-clock time when the first expiry among the details read passes."""

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease counts without renewal (its holder renews it every third)."""
        return self._leases.lease_ttl

    @property
    def trial_ttl(self) -> float:
        """Seconds the fleet's trial call is held without renewal (its holder renews it
        every ``trial_ttl / 3``): what a worker killed mid-trial costs the fleet."""
        return self._leases.trial_ttl

    @property
    def async_release(self) -> bool:
        """Whether releases go out on a background thread (else on the caller's)."""
        return self._leases.async_release

    def __repr__(self) -> str:
        return f"RedisSharedState(url={self.safe_url!r}, worker={self.worker!r})"

    # ------------------------------------------------------------------ the view
    def view(self, now: float) -> Mapping[str, SharedBackend] | None:
        link = self._link
        if not link.ok(now):
            return None
        cached = link.counts
        try:
            if (
                cached is not None
                and time.perf_counter() - cached[2] < self.view_max_age
                and abs(now - link.counts_now) < self.view_max_age
            ):
                counts, ver = cached[0], cached[1]
            else:
                fnow = self.fleet_clock()
                pipe = link.r.pipeline(transaction=False)
                for keys in self._keys.of.values():
                    pipe.zcount(keys["lease"], f"({fnow}", "+inf")
                pipe.get(self._keys.ver)
                *counts, ver = pipe.execute()
                link.counts = ([int(x) for x in counts], ver, time.perf_counter())
                link.counts_now = now
            if ver != link.ver or not self._details or now >= self._details_until:
                # Changed, or something read last time has expired since (no version
                # marks an expiry): read again.
                self._details = self._read_details(now, self.fleet_clock())
                link.ver = ver
        except (redis.RedisError, OSError, ValueError) as exc:
            link.failed(exc, now)
            return None
        link.recovered(now)
        out: dict[str, SharedBackend] = {}
        for b, n in zip(self._keys.of, counts, strict=True):
            br, missing, oom = self._details.get(b, (None, {}, {}))
            out[b] = SharedBackend(int(n), br, missing, oom)
        return out

    def _read_details(self, now: float, fnow: float) -> dict[str, BackendDetails]:
        pipe = self._link.r.pipeline(transaction=False)
        for keys in self._keys.of.values():
            pipe.hgetall(keys["breaker"])
            pipe.hmget(keys["trial"], "m", "exp")
            pipe.hgetall(keys["marks"])
        res = pipe.execute()
        out: dict[str, BackendDetails] = {}
        first_expiry = float("inf")  # on the fleet clock
        for i, b in enumerate(self._keys.of):
            h, (holder, trial_exp), marks = res[3 * i : 3 * i + 3]
            mine = self._leases.trial_of(b)
            out[b], expiry = decode_details(h, holder, trial_exp, marks, mine, now, fnow)
            first_expiry = min(first_expiry, expiry)
        self._details_until = to_local(first_expiry, now, fnow)
        return out

    # ------------------------------------------------------------------ leases
    def acquire(
        self,
        backend: str,
        now: float,
        *,
        trial: bool,
        spill_to: Sequence[str] = (),
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> bool | None:
        return self._leases.acquire(backend, now, trial=trial, spill_to=spill_to, costs=costs)

    def release(self, backend: str, now: float) -> None:
        self._leases.release(backend, now)

    def flush(self, timeout: float = 2.0) -> None:
        """Send the releases still queued and wait for them (close() does it too)."""
        self._leases.flush(timeout)

    def renew_leases(self) -> int:
        """Push the expiry of every lease this worker holds ``lease_ttl`` ahead, and of every
        trial it holds ``trial_ttl`` ahead (the background thread does it every third of the
        shorter); returns how many leases."""
        return self._leases.renew_leases()

    # ------------------------------------------------------------------ breakers, marks
    def publish_breaker(self, backend: str, breaker: SharedBreaker, now: float) -> None:
        keys = self._keys.of.get(backend)
        if keys is None or not self._link.ok(now):
            return
        fnow = self.fleet_clock()
        try:
            pipe = self._link.r.pipeline(transaction=False)
            if breaker.state == "closed" or breaker.opened_at is None:
                pipe.delete(keys["breaker"])
            else:
                mapping, keep = breaker_fields(breaker, breaker.opened_at, now, fnow)
                pipe.hset(keys["breaker"], mapping=mapping)
                pipe.expire(keys["breaker"], int(keep) + 60)
            trial = self._leases.trial_of(backend)
            if trial is not None:
                self._link.release_trial(
                    keys=[keys["trial"], self._keys.ver], args=[trial], client=pipe
                )
            pipe.incr(self._keys.ver)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._link.failed(exc, now)

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
        keys = self._keys.of.get(backend)
        if keys is None or not self._link.ok(now):
            return
        fnow = self.fleet_clock()
        f_until = to_fleet(until, now, fnow)
        data = mark_value(f_until, num_ctx, message)
        try:
            pipe = self._link.r.pipeline(transaction=False)
            pipe.hset(keys["marks"], f"{kind}:{model}", data)
            pipe.expire(keys["marks"], max(1, int(f_until - fnow) + 1), gt=True)
            pipe.expire(keys["marks"], max(1, int(f_until - fnow) + 1), nx=True)
            pipe.incr(self._keys.ver)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._link.failed(exc, now)

    # ------------------------------------------------------------------ probes, speeds
    def probe_decision(self, backend: str, now: float, ttl: float) -> ProbeDecision:
        keys = self._keys.of.get(backend)
        if keys is None or not self._link.ok(now):
            return ("probe", None)
        fnow = self.fleet_clock()
        try:
            res = self._link.probe(
                keys=[keys["probe"], keys["probing"]],
                args=[repr(fnow), repr(ttl), self.worker, int(max(ttl, 5.0) * 1000)],
            )
        except (redis.RedisError, OSError) as exc:
            self._link.failed(exc, now)
            return ("probe", None)
        self._link.recovered(now)
        kind = res[0].decode()
        if kind == "probe" or not res[1]:
            return ("probe", None) if kind == "probe" else ("skip", None)
        try:
            result = probe_from_json(res[1], to_local(float(res[2]), now, fnow))
        except (ValueError, KeyError, TypeError):
            return ("probe", None)
        return ("adopt" if kind == "adopt" else "skip", result)

    def publish_probe(self, backend: str, result: ProbeResult, now: float, ttl: float) -> None:
        keys = self._keys.of.get(backend)
        if keys is None or not self._link.ok(now):
            return
        fnow = self.fleet_clock()
        try:
            pipe = self._link.r.pipeline(transaction=False)
            pipe.hset(
                keys["probe"],
                mapping={
                    "at": repr(to_fleet(result.at, now, fnow)),
                    "data": probe_to_json(result),
                },
            )
            pipe.pexpire(keys["probe"], int(ttl * 3000) + 1)
            pipe.delete(keys["probing"])
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._link.failed(exc, now)

    def sync_speeds(
        self, mine: Mapping[tuple[str, str], SpeedEstimate], now: float
    ) -> Mapping[tuple[str, str], SpeedEstimate] | None:
        if not self._link.ok(now):
            return None
        try:
            pipe = self._link.r.pipeline(transaction=False)
            if mine:
                pipe.hset(self._keys.speeds, mapping=speeds_to_hash(mine))
                pipe.expire(self._keys.speeds, 7 * 24 * 3600)
            pipe.hgetall(self._keys.speeds)
            raw = pipe.execute()[-1]
        except (redis.RedisError, OSError) as exc:
            self._link.failed(exc, now)
            return None
        return speeds_from_hash(raw)

    # ------------------------------------------------------------------ the rest
    def describe(self) -> dict[str, Any]:
        return {
            "mode": "redis",
            "url": self.safe_url,
            "worker": self.worker,
            "down": self._link.down,
            "unsent_releases": self._leases.unsent_count(),
        }

    def close(self) -> None:
        """Send queued releases (and, once more, those kept from an outage), stop renewing,
        drop the connections. Usable afterwards: the next call reconnects (the router's
        close() keeps it usable too)."""
        self._leases.close()
        self._link.close()

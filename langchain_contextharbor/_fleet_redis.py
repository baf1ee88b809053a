"""The Redis implementation of :class:`~langchain_contextharbor.fleet.SharedState`.

Imported only when fleet mode is asked for (``shared_state="redis://..."`` or
``CONTEXTHARBOR_REDIS_URL``); needs ``pip install 'langchain-contextharbor[fleet]'``.

Layout (every key under ``contextharbor:<namespace>:``; backends by name, so every worker of
a fleet must give the same servers the same names):

* ``lease:<backend>`` — sorted set of calls in flight, one member per call, scored with
  its expiry (fleet clock). A worker renews the leases it holds every ``lease_ttl / 3``;
  a worker that dies stops renewing and its calls stop counting within ``lease_ttl`` (30 s,
  as ``trial_ttl``: a worker killed at any point costs the fleet at most that long, in
  phantom load as in a held trial).
* ``breaker:<backend>`` — hash of an open circuit (opened_at, cooldown, failures, until);
  absent or past ``until`` = closed. ``trial:<backend>`` — hash of who holds the fleet's one
  trial call (``m``) and until when (``exp``, ``trial_ttl`` ahead, renewed by its living
  holder with its leases): a worker killed while it holds the trial costs the fleet at most
  ``trial_ttl`` seconds of that backend.
* ``marks:<backend>`` — hash of learned 404 / out-of-memory marks (JSON per model, each
  with its ``until``).
* ``probe:<backend>`` — the last probe result (JSON) with its time; ``probing:<backend>``
  — a short lock so that one worker probes per TTL for the whole fleet.
* ``speeds`` — learned speeds per ``<backend>|<model>`` (JSON), exchanged every few
  seconds off the hot path; a worker takes those it has not measured itself.
* ``ver`` — bumped on every breaker, trial or mark change, so a plan reads the in-flight
  counts plus one integer (one round trip) and fetches the rest only when it changed, or
  when something it read expires: every expiry (trial, circuit, mark) is a time on the fleet
  clock stored in the value, and the details are read again once the earliest of them has
  passed (an expiry bumps no version). Redis's own key expiry only collects garbage.

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

import itertools
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

import redis

from langchain_contextharbor._facts import ProbeResult
from langchain_contextharbor.backends import redact_url
from langchain_contextharbor.errors import ConfigurationError
from langchain_contextharbor.fleet import (
    MarkKind,
    ProbeDecision,
    SharedBackend,
    SharedBreaker,
)
from langchain_contextharbor.routing import LoadedModel, SpeedEstimate

logger = logging.getLogger("langchain_contextharbor")

__all__ = ["RedisSharedState"]

_ACQUIRE = """
local now, here, n = ARGV[1], tonumber(ARGV[6]), #KEYS - 2
local function live(i) return redis.call('ZCOUNT', KEYS[2 + i], '(' .. now, '+inf') end
local function eta(i, c)
  local ahead = c - tonumber(ARGV[7 + i]) + 1
  if ahead < 0 then ahead = 0 end
  return ahead * tonumber(ARGV[7 + 2 * n + i]) + tonumber(ARGV[7 + n + i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2 + here], '-inf', now)
local status = 1
if ARGV[4] == '1' then
  local held = redis.call('HMGET', KEYS[1], 'm', 'exp')
  if held[1] and tonumber(held[2] or '0') > tonumber(now) then
    status = -1
  else
    redis.call('HSET', KEYS[1], 'm', ARGV[3], 'exp', ARGV[5])
    redis.call('PEXPIRE', KEYS[1], ARGV[8 + 3 * n])
    redis.call('INCR', KEYS[2])
  end
else
  local c = redis.call('ZCARD', KEYS[2 + here])
  if c >= tonumber(ARGV[7 + here]) then
    local mine = eta(here, c)
    for a in string.gmatch(ARGV[7], '%d+') do
      local i = tonumber(a)
      if eta(i, live(i)) < mine then
        status = -2
        break
      end
    end
  end
end
if status == 1 then redis.call('ZADD', KEYS[2 + here], ARGV[2], ARGV[3]) end
local out = {status, redis.call('GET', KEYS[2]) or '0'}
for i = 1, n do out[#out + 1] = live(i) end
return out
"""
"""KEYS: trial of this backend, ver, then the lease set of every backend (n). ARGV: now,
expiry, member, trial?, the trial's expiry, index of this backend, indexes of the spill-over
alternatives (comma separated), then per backend: max_parallel (n values), expected seconds
with a free slot (n), seconds added per call queued ahead per slot (n); last, the trial key's
lifetime in ms (garbage collection only: a trial is over at its expiry on the fleet clock,
which is what makes the expiry visible to, and testable with, an injected clock). The trial
key is a hash (``m``: the member holding it, ``exp``: its expiry). Returns status (1
reserved; -1 the fleet's trial is taken; -2 no free slot here and an alternative is
expected to finish sooner on these counts: spill over, as the plan would), ver, and the
live count of every backend (so the next plan needs no round trip of its own)."""

_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[2])
if ARGV[3] ~= '' and redis.call('HGET', KEYS[2], 'm') == ARGV[3] then
  redis.call('DEL', KEYS[2])
  redis.call('INCR', KEYS[3])
end
local out = {0, redis.call('GET', KEYS[3]) or '0'}
for i = 4, #KEYS do out[#out + 1] = redis.call('ZCOUNT', KEYS[i], '(' .. ARGV[1], '+inf') end
return out
"""
"""KEYS: lease, trial, ver, then the lease set of every backend. ARGV: now, member, the
trial member held or ''. Returns like _ACQUIRE."""

_RELEASE_TRIAL = """
if redis.call('HGET', KEYS[1], 'm') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('INCR', KEYS[2])
end
return 0
"""

_RENEW_TRIAL = """
if redis.call('HGET', KEYS[1], 'm') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'exp', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
"""
"""KEYS: a trial key. ARGV: the member holding it, its new expiry (fleet clock), key lifetime
(ms). A trial whose holder is alive is pushed ahead; another worker's is left alone."""

_PROBE = """
local at = redis.call('HGET', KEYS[1], 'at')
if at and tonumber(ARGV[1]) - tonumber(at) < tonumber(ARGV[2]) then
  return {'adopt', redis.call('HGET', KEYS[1], 'data'), at}
end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return {'probe'} end
return {'skip', redis.call('HGET', KEYS[1], 'data') or '', at or ''}
"""


def _scrub_url(url: str, text: str) -> str:
    """``text`` with the Redis URL's credentials removed."""
    try:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        secrets = [s for s in (parts.password, parts.username) if s]
    except ValueError:
        secrets = []
    if url in text:
        text = text.replace(url, redact_url(url))
    for s in secrets:
        if len(s) >= 3:
            text = text.replace(s, "***")
    return text


class RedisSharedState:
    """Shared router state in one Redis (see the module docstring for the layout)."""

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
        self._url = url
        self.safe_url = redact_url(url)
        self.fleet_clock = clock or time.time
        self.lease_ttl = float(lease_ttl)
        self.trial_ttl = float(trial_ttl)
        """Seconds the fleet's trial call is held without renewal (its holder renews it
        every ``trial_ttl / 3``): what a worker killed mid-trial costs the fleet."""
        self.max_parallel = dict(max_parallel or {})
        p = f"contextharbor:{namespace}:"
        self._k_ver = p + "ver"
        self._k_speeds = p + "speeds"
        self._k: dict[str, dict[str, str]] = {
            b: {
                n: f"{p}{n}:{b}" for n in ("lease", "breaker", "trial", "marks", "probe", "probing")
            }
            for b in backends
        }
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count()
        self._index = {b: i + 1 for i, b in enumerate(self._k)}
        self._leases = [self._k[b]["lease"] for b in self._k]
        self._caps = [self.max_parallel.get(b, 1 << 30) for b in self._k]
        self.view_max_age = float(view_max_age)
        self.async_release = async_release
        self._outbox: queue.SimpleQueue[tuple[str, str, str | None, float] | None] = (
            queue.SimpleQueue()
        )
        self._sender: threading.Thread | None = None
        self._counts: tuple[list[int], Any, float] | None = None
        self._counts_now = float("-inf")
        self._held: dict[str, list[str]] = {b: [] for b in backends}
        self._trials: dict[str, str] = {}
        self._unsent: list[tuple[str, str, str | None]] = []
        """Releases (backend, member, trial member) not sent yet: the store was down, or the
        round trip failed (also acquires whose reply never came). Sent on recovery."""
        self._lock = threading.Lock()
        try:
            self._r: Any = client or redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=None,
                retry_on_timeout=False,
                health_check_interval=0,
            )
        except (ValueError, redis.RedisError) as exc:
            raise ConfigurationError(
                f"shared_state {self.safe_url!r}: {_scrub_url(url, str(exc))}"
            ) from None
        self._acquire = self._r.register_script(_ACQUIRE)
        self._release = self._r.register_script(_RELEASE)
        self._release_trial = self._r.register_script(_RELEASE_TRIAL)
        self._renew_trial = self._r.register_script(_RENEW_TRIAL)
        self._probe = self._r.register_script(_PROBE)
        self._down_until = float("-inf")
        self._backoff = 1.0
        self._down = False
        self._ver: Any = None
        self._details: dict[str, tuple[SharedBreaker | None, dict[str, Any], dict[str, Any]]] = {}
        self._details_until = float("inf")
        """Router-clock time when the first expiry among the details read passes."""
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ plumbing
    def __repr__(self) -> str:
        return f"RedisSharedState(url={self.safe_url!r}, worker={self.worker!r})"

    def _ok(self, now: float) -> bool:
        return not self._down or now >= self._down_until

    def _failed(self, exc: BaseException, now: float) -> None:
        if not self._down:
            logger.warning(
                "fleet state at %s unavailable, deciding locally until it is back: %s: %s",
                self.safe_url,
                type(exc).__name__,
                _scrub_url(self._url, str(exc)),
            )
            self._backoff = 1.0
        else:
            self._backoff = min(self._backoff * 2, 30.0)
        self._down = True
        self._down_until = now + self._backoff
        self._ver = None

    def _recovered(self, now: float) -> None:
        if self._down:
            self._down = False
            self._backoff = 1.0
            logger.info("fleet state at %s reachable again", self.safe_url)
            self._send_unsent(now)

    def _keep_unsent(self, items: Sequence[tuple[str, str, str | None]]) -> None:
        """Keep releases that did not reach the store, to send on recovery (bounded: a
        very long outage loses the oldest, which their expiry then ends)."""
        with self._lock:
            self._unsent.extend(items)
            del self._unsent[:-10_000]

    def _send_unsent(self, now: float) -> None:
        """Send the releases kept during an outage (releasing twice is harmless)."""
        with self._lock:
            items, self._unsent = self._unsent, []
        if not items:
            return
        batch = [(b, m, t, now) for b, m, t in items]
        if self.async_release:
            for item in batch:
                self._outbox.put(item)
            self._ensure_sender()
        else:
            self._send_releases(batch)

    def _to_local(self, t: float, now: float, fnow: float) -> float:
        return now - (fnow - t)

    def _to_fleet(self, t: float, now: float, fnow: float) -> float:
        return fnow - (now - t)

    # ------------------------------------------------------------------ SharedState
    def _remember(self, reply: Sequence[Any], now: float) -> None:
        """Keep the counts and ver an acquire/release reply carried, for the next plan."""
        self._counts = ([int(x) for x in reply[2:]], reply[1], time.perf_counter())
        self._counts_now = now

    def view(self, now: float) -> Mapping[str, SharedBackend] | None:
        if not self._ok(now):
            return None
        cached = self._counts
        try:
            if (
                cached is not None
                and time.perf_counter() - cached[2] < self.view_max_age
                and abs(now - self._counts_now) < self.view_max_age
            ):
                counts, ver = cached[0], cached[1]
            else:
                fnow = self.fleet_clock()
                pipe = self._r.pipeline(transaction=False)
                for keys in self._k.values():
                    pipe.zcount(keys["lease"], f"({fnow}", "+inf")
                pipe.get(self._k_ver)
                *counts, ver = pipe.execute()
                self._counts = ([int(x) for x in counts], ver, time.perf_counter())
                self._counts_now = now
            if ver != self._ver or not self._details or now >= self._details_until:
                # Changed, or something read last time has expired since (no version
                # marks an expiry): read again.
                self._details = self._read_details(now, self.fleet_clock())
                self._ver = ver
        except (redis.RedisError, OSError, ValueError) as exc:
            self._failed(exc, now)
            return None
        self._recovered(now)
        out: dict[str, SharedBackend] = {}
        for b, n in zip(self._k, counts, strict=True):
            br, missing, oom = self._details.get(b, (None, {}, {}))
            out[b] = SharedBackend(int(n), br, missing, oom)
        return out

    def _read_details(
        self, now: float, fnow: float
    ) -> dict[str, tuple[SharedBreaker | None, dict[str, Any], dict[str, Any]]]:
        pipe = self._r.pipeline(transaction=False)
        for keys in self._k.values():
            pipe.hgetall(keys["breaker"])
            pipe.hmget(keys["trial"], "m", "exp")
            pipe.hgetall(keys["marks"])
        res = pipe.execute()
        out: dict[str, tuple[SharedBreaker | None, dict[str, Any], dict[str, Any]]] = {}
        first_expiry = float("inf")  # on the fleet clock
        for i, b in enumerate(self._k):
            h, (holder, trial_exp), marks = res[3 * i : 3 * i + 3]
            mine = self._trials.get(b)
            busy = False
            if holder is not None and holder.decode() != mine:
                exp = float(trial_exp or 0.0)
                busy = exp > fnow
                if busy:
                    first_expiry = min(first_expiry, exp)
            if h:
                until = float(h.get(b"until", "inf"))
                if until <= fnow:
                    h = {}  # faded out: closed as far as the fleet knows
                else:
                    first_expiry = min(first_expiry, until)
            br: SharedBreaker | None = None
            if h:
                br = SharedBreaker(
                    "open",
                    int(h.get(b"failures", 1)),
                    self._to_local(float(h[b"opened_at"]), now, fnow),
                    float(h.get(b"cooldown", 0.0)),
                    trial_busy=busy,
                )
            elif busy:
                br = SharedBreaker("closed", trial_busy=True)
            missing: dict[str, float] = {}
            oom: dict[str, tuple[int, float, str]] = {}
            for field_, raw in (marks or {}).items():
                kind, _, model = field_.decode().partition(":")
                m = json.loads(raw)
                until = float(m["until"])
                if until <= fnow:
                    continue
                first_expiry = min(first_expiry, until)
                local_until = self._to_local(until, now, fnow)
                if kind == "missing":
                    missing[model] = local_until
                elif kind == "oom":
                    oom[model] = (int(m.get("ctx", 0)), local_until, str(m.get("msg", "")))
            out[b] = (br, missing, oom)
        self._details_until = self._to_local(first_expiry, now, fnow)
        return out

    def acquire(
        self,
        backend: str,
        now: float,
        *,
        trial: bool,
        spill_to: Sequence[str] = (),
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> bool | None:
        keys = self._k.get(backend)
        if keys is None or not self._ok(now):
            return None
        fnow = self.fleet_clock()
        member = f"{self.worker}:{next(self._seq)}"
        alts = ",".join(str(self._index[a]) for a in spill_to if a in self._index and a != backend)
        try:
            reply = self._acquire(
                keys=[keys["trial"], self._k_ver, *self._leases],
                args=[
                    repr(fnow),
                    repr(fnow + self.lease_ttl),
                    member,
                    "1" if trial else "0",
                    repr(fnow + self.trial_ttl),
                    self._index[backend],
                    alts,
                    *self._caps,
                    *self._costs(costs),
                    self._trial_key_ms(),
                ],
            )
        except (redis.RedisError, OSError) as exc:
            # No reply, but the script may still run (a paused Redis runs what it was sent
            # when it resumes): release what it would hold, once the store answers again.
            self._keep_unsent([(backend, member, member if trial else None)])
            self._failed(exc, now)
            return None
        self._remember(reply, now)
        n = reply[0]
        self._recovered(now)
        if int(n) < 0:
            return False
        with self._lock:
            self._held[backend].append(member)
            if trial:
                self._trials[backend] = member
        self._ensure_renewer()
        return True

    def _trial_key_ms(self) -> int:
        """Lifetime of a trial key in Redis (garbage collection; the expiry that counts is
        the ``exp`` in the key, on the fleet clock)."""
        return int(max(4 * self.trial_ttl, 60.0) * 1000)

    def _costs(self, costs: Mapping[str, tuple[float, float]] | None) -> list[str]:
        """The per-backend finish-time inputs for _ACQUIRE (queue depth per slot when the
        plan gave none)."""
        free: list[str] = []
        step: list[str] = []
        for b, cap in zip(self._k, self._caps, strict=True):
            c = (costs or {}).get(b)
            free.append(repr(c[0]) if c else "0")
            step.append(repr(c[1]) if c else repr(1.0 / max(1, min(cap, 1 << 20))))
        return free + step

    def release(self, backend: str, now: float) -> None:
        keys = self._k.get(backend)
        if keys is None:
            return
        with self._lock:
            held = self._held[backend]
            member = held.pop() if held else None
            trial = self._trials.pop(backend, None)
        if member is None:
            return
        if not self._ok(now):  # the store is down: sent when it is back
            self._keep_unsent([(backend, member, trial)])
            return
        cached = self._counts
        if cached is not None:  # our own lease is gone: the next plan must not count it
            counts = list(cached[0])
            i = self._index[backend] - 1
            counts[i] = max(0, counts[i] - 1)
            self._counts = (counts, cached[1], cached[2])
        if self.async_release:
            self._outbox.put((backend, member, trial, now))
            self._ensure_sender()
        else:
            self._send_releases([(backend, member, trial, now)])

    def _send_releases(self, batch: list[tuple[str, str, str | None, float]]) -> None:
        """One round trip for every release in ``batch`` (the sender thread's work)."""
        now = batch[-1][3]
        fnow = repr(self.fleet_clock())
        try:
            if len(batch) == 1:  # the common case: no pipeline (it would check the script)
                backend, member, trial, _ = batch[0]
                keys = self._k[backend]
                reply = self._release(
                    keys=[keys["lease"], keys["trial"], self._k_ver, *self._leases],
                    args=[fnow, member, trial or ""],
                )
            else:
                pipe = self._r.pipeline(transaction=False)
                for backend, member, trial, _ in batch:
                    keys = self._k[backend]
                    self._release(
                        keys=[keys["lease"], keys["trial"], self._k_ver, *self._leases],
                        args=[fnow, member, trial or ""],
                        client=pipe,
                    )
                reply = pipe.execute()[-1]
        except (redis.RedisError, OSError) as exc:
            self._keep_unsent([(b, m, t) for b, m, t, _ in batch])
            self._failed(exc, now)
            return
        self._remember(reply, now)

    def _ensure_sender(self) -> None:
        if self._sender is None or not self._sender.is_alive():
            with self._lock:
                if self._sender is None or not self._sender.is_alive():
                    t = threading.Thread(
                        target=self._send_loop, name="contextharbor-fleet-release", daemon=True
                    )
                    self._sender = t
                    t.start()

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    nxt = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._send_releases(batch)
                    return
                batch.append(nxt)
            self._send_releases(batch)

    def flush(self, timeout: float = 2.0) -> None:
        """Send the releases still queued and wait for them (close() does it too)."""
        sender = self._sender
        if sender is not None and sender.is_alive():
            self._outbox.put(None)
            sender.join(timeout)
        self._sender = None

    def publish_breaker(self, backend: str, breaker: SharedBreaker, now: float) -> None:
        keys = self._k.get(backend)
        if keys is None or not self._ok(now):
            return
        fnow = self.fleet_clock()
        try:
            pipe = self._r.pipeline(transaction=False)
            if breaker.state == "closed" or breaker.opened_at is None:
                pipe.delete(keys["breaker"])
            else:
                # Kept well past the trial time; a circuit nobody re-opens fades out.
                keep = max(600.0, breaker.cooldown * 4)
                pipe.hset(
                    keys["breaker"],
                    mapping={
                        "opened_at": repr(self._to_fleet(breaker.opened_at, now, fnow)),
                        "cooldown": repr(breaker.cooldown),
                        "failures": breaker.failures,
                        "until": repr(fnow + keep),
                    },
                )
                pipe.expire(keys["breaker"], int(keep) + 60)
            trial = self._trials.get(backend)
            if trial is not None:
                self._release_trial(keys=[keys["trial"], self._k_ver], args=[trial], client=pipe)
            pipe.incr(self._k_ver)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, now)

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
        keys = self._k.get(backend)
        if keys is None or not self._ok(now):
            return
        fnow = self.fleet_clock()
        f_until = self._to_fleet(until, now, fnow)
        data = json.dumps({"until": f_until, "ctx": num_ctx, "msg": message[:200]})
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.hset(keys["marks"], f"{kind}:{model}", data)
            pipe.expire(keys["marks"], max(1, int(f_until - fnow) + 1), gt=True)
            pipe.expire(keys["marks"], max(1, int(f_until - fnow) + 1), nx=True)
            pipe.incr(self._k_ver)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, now)

    def probe_decision(self, backend: str, now: float, ttl: float) -> ProbeDecision:
        keys = self._k.get(backend)
        if keys is None or not self._ok(now):
            return ("probe", None)
        fnow = self.fleet_clock()
        try:
            res = self._probe(
                keys=[keys["probe"], keys["probing"]],
                args=[repr(fnow), repr(ttl), self.worker, int(max(ttl, 5.0) * 1000)],
            )
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, now)
            return ("probe", None)
        self._recovered(now)
        kind = res[0].decode()
        if kind == "probe" or not res[1]:
            return ("probe", None) if kind == "probe" else ("skip", None)
        try:
            result = _probe_from_json(res[1], self._to_local(float(res[2]), now, fnow))
        except (ValueError, KeyError, TypeError):
            return ("probe", None)
        return ("adopt" if kind == "adopt" else "skip", result)

    def publish_probe(self, backend: str, result: ProbeResult, now: float, ttl: float) -> None:
        keys = self._k.get(backend)
        if keys is None or not self._ok(now):
            return
        fnow = self.fleet_clock()
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.hset(
                keys["probe"],
                mapping={
                    "at": repr(self._to_fleet(result.at, now, fnow)),
                    "data": _probe_to_json(result),
                },
            )
            pipe.pexpire(keys["probe"], int(ttl * 3000) + 1)
            pipe.delete(keys["probing"])
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, now)

    def sync_speeds(
        self, mine: Mapping[tuple[str, str], SpeedEstimate], now: float
    ) -> Mapping[tuple[str, str], SpeedEstimate] | None:
        if not self._ok(now):
            return None
        try:
            pipe = self._r.pipeline(transaction=False)
            if mine:
                pipe.hset(
                    self._k_speeds,
                    mapping={f"{b}|{m}": json.dumps(asdict(sp)) for (b, m), sp in mine.items()},
                )
                pipe.expire(self._k_speeds, 7 * 24 * 3600)
            pipe.hgetall(self._k_speeds)
            raw = pipe.execute()[-1]
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, now)
            return None
        out: dict[tuple[str, str], SpeedEstimate] = {}
        for k, v in (raw or {}).items():
            b, _, m = k.decode().partition("|")
            try:
                out[(b, m)] = SpeedEstimate(**json.loads(v))
            except (TypeError, ValueError):
                continue
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "redis",
            "url": self.safe_url,
            "worker": self.worker,
            "down": self._down,
            "unsent_releases": len(self._unsent),
        }

    def close(self) -> None:
        """Send queued releases (and, once more, those kept from an outage), stop renewing,
        drop the connections. Usable afterwards: the next call reconnects (the router's
        close() keeps it usable too)."""
        self.flush()
        with self._lock:
            unsent, self._unsent = self._unsent, []
        if unsent:
            self._send_releases([(b, m, t, float("-inf")) for b, m, t in unsent])
        self._stop.set()
        self._stop = threading.Event()
        self._renewer = None
        try:
            self._r.close()
        except Exception:  # pragma: no cover - closing never raises into callers
            pass

    # ------------------------------------------------------------------ leases
    def _ensure_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            with self._lock:
                if self._renewer is None or not self._renewer.is_alive():
                    t = threading.Thread(
                        target=self._renew_loop, name="contextharbor-fleet-leases", daemon=True
                    )
                    self._renewer = t
                    t.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(min(self.lease_ttl, self.trial_ttl) / 3):
            self.renew_leases()

    def renew_leases(self) -> int:
        """Push the expiry of every lease this worker holds ``lease_ttl`` ahead, and of every
        trial it holds ``trial_ttl`` ahead (the background thread does it every third of the
        shorter); returns how many leases."""
        with self._lock:
            held = {b: list(ms) for b, ms in self._held.items() if ms}
            trials = dict(self._trials)
        if not held and not trials:
            return 0
        fnow = self.fleet_clock()
        expiry = fnow + self.lease_ttl
        try:
            pipe = self._r.pipeline(transaction=False)
            for b, members in held.items():
                pipe.zadd(self._k[b]["lease"], dict.fromkeys(members, expiry), xx=True)
            for b, member in trials.items():
                self._renew_trial(
                    keys=[self._k[b]["trial"]],
                    args=[member, repr(fnow + self.trial_ttl), self._trial_key_ms()],
                    client=pipe,
                )
            pipe.execute()
        except (redis.RedisError, OSError):
            return 0
        return sum(len(m) for m in held.values())


def _probe_to_json(res: ProbeResult) -> str:
    d = asdict(res)
    d.pop("at", None)
    return json.dumps(d)


def _probe_from_json(raw: bytes, at: float) -> ProbeResult:
    d = json.loads(raw)
    known = {f.name for f in fields(ProbeResult)}
    kw = {k: v for k, v in d.items() if k in known and k != "at"}
    if kw.get("loaded") is not None:
        kw["loaded"] = {str(k): LoadedModel(**v) for k, v in kw["loaded"].items()}
    return ProbeResult(at=at, **kw)

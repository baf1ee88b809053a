"""What the Redis fleet store keeps in Redis, and how: key layout, Lua scripts, value encoding.

Why a module of its own: the layout below is a contract between every worker of a fleet (a
worker of another version reads the same keys), and the scripts and encoders are its only
writers and readers. :class:`RedisLink` is the one connection they go through, with the
store's failure policy; :mod:`~langchain_contextharbor._fleet_leases` holds this worker's
leases and trials, :mod:`~langchain_contextharbor._fleet_redis` composes both into
:class:`~langchain_contextharbor.fleet.SharedState`. The encoders are pure: every time is an
argument.

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
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

import redis

from langchain_contextharbor._facts import ProbeResult
from langchain_contextharbor.backends import redact_url
from langchain_contextharbor.errors import ConfigurationError
from langchain_contextharbor.fleet import SharedBreaker
from langchain_contextharbor.routing import LoadedModel, SpeedEstimate

logger = logging.getLogger("langchain_contextharbor")

__all__ = [
    "ACQUIRE",
    "PROBE",
    "RELEASE",
    "RELEASE_TRIAL",
    "RENEW_TRIAL",
    "BackendDetails",
    "FleetKeys",
    "RedisLink",
    "acquire_costs",
    "breaker_fields",
    "decode_details",
    "mark_value",
    "probe_from_json",
    "probe_to_json",
    "scrub_url",
    "speeds_from_hash",
    "speeds_to_hash",
    "to_fleet",
    "to_local",
    "trial_key_ms",
]

BackendDetails = tuple[SharedBreaker | None, dict[str, float], dict[str, tuple[int, float, str]]]
"""What a view knows of one backend beyond its count: the fleet's circuit (or a busy trial),
the models marked missing (until when) and out of memory (context, until when, message)."""

ACQUIRE = """
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

RELEASE = """
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
trial member held or ''. Returns like ACQUIRE."""

RELEASE_TRIAL = """
if redis.call('HGET', KEYS[1], 'm') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('INCR', KEYS[2])
end
return 0
"""

RENEW_TRIAL = """
if redis.call('HGET', KEYS[1], 'm') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'exp', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
"""
"""KEYS: a trial key. ARGV: the member holding it, its new expiry (fleet clock), key lifetime
(ms). A trial whose holder is alive is pushed ahead; another worker's is left alone."""

PROBE = """
local at = redis.call('HGET', KEYS[1], 'at')
if at and tonumber(ARGV[1]) - tonumber(at) < tonumber(ARGV[2]) then
  return {'adopt', redis.call('HGET', KEYS[1], 'data'), at}
end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return {'probe'} end
return {'skip', redis.call('HGET', KEYS[1], 'data') or '', at or ''}
"""


class FleetKeys:
    """Every key of one namespace (see the module docstring for what each holds), by backend.

    ``index`` numbers the backends from 1 in the order given, as the scripts address the
    lease sets in ``KEYS``; ``leases`` is that list of lease keys.
    """

    def __init__(self, namespace: str, backends: Sequence[str]) -> None:
        p = f"contextharbor:{namespace}:"
        self.ver = p + "ver"
        self.speeds = p + "speeds"
        self.of: dict[str, dict[str, str]] = {
            b: {
                n: f"{p}{n}:{b}" for n in ("lease", "breaker", "trial", "marks", "probe", "probing")
            }
            for b in backends
        }
        self.index = {b: i + 1 for i, b in enumerate(self.of)}
        self.leases = [self.of[b]["lease"] for b in self.of]


def scrub_url(url: str, text: str) -> str:
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


# ------------------------------------------------------------------ times and values
def to_local(t: float, now: float, fnow: float) -> float:
    """A fleet-clock time ``t`` on the router's clock (``now`` and ``fnow`` read together)."""
    return now - (fnow - t)


def to_fleet(t: float, now: float, fnow: float) -> float:
    """A router-clock time ``t`` on the fleet clock (``now`` and ``fnow`` read together)."""
    return fnow - (now - t)


def trial_key_ms(trial_ttl: float) -> int:
    """Lifetime of a trial key in Redis (garbage collection; the expiry that counts is
    the ``exp`` in the key, on the fleet clock)."""
    return int(max(4 * trial_ttl, 60.0) * 1000)


def acquire_costs(
    backends: Iterable[str], caps: Sequence[int], costs: Mapping[str, tuple[float, float]] | None
) -> list[str]:
    """The per-backend finish-time inputs for ACQUIRE (queue depth per slot when the
    plan gave none)."""
    free: list[str] = []
    step: list[str] = []
    for b, cap in zip(backends, caps, strict=True):
        c = (costs or {}).get(b)
        free.append(repr(c[0]) if c else "0")
        step.append(repr(c[1]) if c else repr(1.0 / max(1, min(cap, 1 << 20))))
    return free + step


def breaker_fields(
    breaker: SharedBreaker, opened_at: float, now: float, fnow: float
) -> tuple[dict[str, Any], float]:
    """The ``breaker:<backend>`` hash of a circuit opened at ``opened_at`` (router clock), and
    how long it is kept (seconds)."""
    # Kept well past the trial time; a circuit nobody re-opens fades out.
    keep = max(600.0, breaker.cooldown * 4)
    return {
        "opened_at": repr(to_fleet(opened_at, now, fnow)),
        "cooldown": repr(breaker.cooldown),
        "failures": breaker.failures,
        "until": repr(fnow + keep),
    }, keep


def mark_value(f_until: float, num_ctx: int, message: str) -> str:
    """The JSON of one ``marks:<backend>`` field (its expiry on the fleet clock)."""
    return json.dumps({"until": f_until, "ctx": num_ctx, "msg": message[:200]})


def decode_details(
    h: Mapping[bytes, bytes] | None,
    holder: bytes | None,
    trial_exp: bytes | None,
    marks: Mapping[bytes, bytes] | None,
    mine: str | None,
    now: float,
    fnow: float,
) -> tuple[BackendDetails, float]:
    """One backend's breaker hash, trial holder and marks as a view sees them, with the
    earliest expiry among what was read (fleet clock; ``inf`` when nothing expires).

    ``mine`` is the trial member this worker holds there: its own trial does not make the
    backend busy for itself. Raises ``ValueError`` on a value no worker writes.
    """
    first_expiry = float("inf")  # on the fleet clock
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
            to_local(float(h[b"opened_at"]), now, fnow),
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
        local_until = to_local(until, now, fnow)
        if kind == "missing":
            missing[model] = local_until
        elif kind == "oom":
            oom[model] = (int(m.get("ctx", 0)), local_until, str(m.get("msg", "")))
    return (br, missing, oom), first_expiry


def probe_to_json(res: ProbeResult) -> str:
    d = asdict(res)
    d.pop("at", None)
    return json.dumps(d)


def probe_from_json(raw: bytes, at: float) -> ProbeResult:
    d = json.loads(raw)
    known = {f.name for f in fields(ProbeResult)}
    kw = {k: v for k, v in d.items() if k in known and k != "at"}
    if kw.get("loaded") is not None:
        kw["loaded"] = {str(k): LoadedModel(**v) for k, v in kw["loaded"].items()}
    return ProbeResult(at=at, **kw)


def speeds_to_hash(mine: Mapping[tuple[str, str], SpeedEstimate]) -> dict[str, str]:
    """This worker's speeds as ``speeds`` hash fields."""
    return {f"{b}|{m}": json.dumps(asdict(sp)) for (b, m), sp in mine.items()}


def speeds_from_hash(raw: Mapping[bytes, bytes] | None) -> dict[tuple[str, str], SpeedEstimate]:
    """The fleet's ``speeds`` hash; a field no worker could have written is skipped."""
    out: dict[tuple[str, str], SpeedEstimate] = {}
    for k, v in (raw or {}).items():
        b, _, m = k.decode().partition("|")
        try:
            out[(b, m)] = SpeedEstimate(**json.loads(v))
        except (TypeError, ValueError):
            continue
    return out


# ------------------------------------------------------------------ the connection
class RedisLink:
    """The one Redis connection of a fleet store: the client and its registered scripts, the
    failure policy (back off and decide locally, log an outage once), and what the last
    reply said (every backend's count and ``ver``, for the next plan).

    Why together: every round trip, from the leases as from the view, ends in
    :meth:`failed` or :meth:`recovered`, and the replies of both feed the same counts.
    """

    def __init__(self, url: str, *, timeout: float, client: Any = None) -> None:
        self.url = url
        self.safe_url = redact_url(url)
        try:
            self.r: Any = client or redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=None,
                retry_on_timeout=False,
                health_check_interval=0,
            )
        except (ValueError, redis.RedisError) as exc:
            raise ConfigurationError(
                f"shared_state {self.safe_url!r}: {scrub_url(url, str(exc))}"
            ) from None
        self.acquire = self.r.register_script(ACQUIRE)
        self.release = self.r.register_script(RELEASE)
        self.release_trial = self.r.register_script(RELEASE_TRIAL)
        self.renew_trial = self.r.register_script(RENEW_TRIAL)
        self.probe = self.r.register_script(PROBE)
        self.down_until = float("-inf")
        self.backoff = 1.0
        self.down = False
        self.ver: Any = None
        """The ``ver`` the view's details were read at; forgotten on a failure, so the first
        view after an outage reads them again."""
        self.counts: tuple[list[int], Any, float] | None = None
        """Every backend's count and ``ver`` from the last reply, with its ``perf_counter``."""
        self.counts_now = float("-inf")
        self.on_recovery: Callable[[float], None] | None = None
        """Called with the router's time when the store answers again after an outage."""

    def ok(self, now: float) -> bool:
        return not self.down or now >= self.down_until

    def failed(self, exc: BaseException, now: float) -> None:
        if not self.down:
            logger.warning(
                "fleet state at %s unavailable, deciding locally until it is back: %s: %s",
                self.safe_url,
                type(exc).__name__,
                scrub_url(self.url, str(exc)),
            )
            self.backoff = 1.0
        else:
            self.backoff = min(self.backoff * 2, 30.0)
        self.down = True
        self.down_until = now + self.backoff
        self.ver = None

    def recovered(self, now: float) -> None:
        if self.down:
            self.down = False
            self.backoff = 1.0
            logger.info("fleet state at %s reachable again", self.safe_url)
            if self.on_recovery is not None:
                self.on_recovery(now)

    def remember(self, reply: Sequence[Any], now: float) -> None:
        """Keep the counts and ver an acquire/release reply carried, for the next plan."""
        self.counts = ([int(x) for x in reply[2:]], reply[1], time.perf_counter())
        self.counts_now = now

    def forget_one(self, i: int) -> None:
        """Our own lease on backend ``i`` (0-based) is gone: the next plan must not count it."""
        cached = self.counts
        if cached is not None:
            counts = list(cached[0])
            counts[i] = max(0, counts[i] - 1)
            self.counts = (counts, cached[1], cached[2])

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:  # pragma: no cover - closing never raises into callers
            pass

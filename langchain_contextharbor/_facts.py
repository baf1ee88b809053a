"""What the router knows, as plain values, and the pure code that turns it into a plan's input.

Why a module of its own: the probe parsers, the speed learning rule, the snapshot building
and the request sizing are data in, data out, like :mod:`~langchain_contextharbor.routing`,
but they used to live inside the router's I/O module. Here they can be read and tested as
tables of cases, and the modules that exchange these values (the fleet's Redis store, the
health report, the embeddings' digest check) import them without importing the router.

Nothing here does I/O, takes a lock or reads a clock: every time is an argument.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.routing import (
    BackendSnapshot,
    LoadedModel,
    RoutePolicy,
    RouteRequest,
    SpeedEstimate,
    estimate_finish,
)
from langchain_contextharbor.sizing import (
    DEFAULT_MODEL_SIZES,
    ArchInfo,
    estimate_model_bytes,
    estimate_request_bytes,
    lookup_model_size,
    normalize_model_name,
)

__all__ = [
    "DECAY",
    "BackendFacts",
    "ProbeResult",
    "build_snapshots",
    "capacity",
    "decode_reply",
    "learn_speed",
    "models_list",
    "parse_digests",
    "parse_loaded",
    "parse_tags",
    "read_version",
    "route_costs",
    "service_s",
    "size_request",
]


@dataclass
class ProbeResult:
    """One probe of one backend (``/api/version``, ``/api/tags``, ``/api/ps``, capacity)."""

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


# ---------------------------------------------------------------------- probe replies
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_reply(body: bytes, path: str) -> Any:
    """A probe reply's JSON (``NaN``/``Infinity`` rejected: Ollama never sends them), or
    ValueError naming ``path``."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except ValueError as exc:
        raise ValueError(f"malformed {path} reply: {exc}") from None


_VERSION_MAX = 64
"""Characters of a version string worth keeping (Ollama's are like ``0.14.3``)."""


def read_version(
    status: int, ctype: str, body: bytes, root: tuple[int, bytes] | None = None
) -> tuple[str | None, str | None]:
    """What a ``GET /api/version`` answer says: ``(version, None)`` from an Ollama server,
    ``(None, reason)`` from anything else, the reason saying what answered instead
    (``"HTTP 501, text/html: not an Ollama server"``). ``root``: the ``GET /`` answer
    (status, body) asked for when ``/api/version`` said 404 -- a gateway that exposes
    part of the API; Ollama's own ``/`` says ``Ollama is running`` (then the version is
    unknown, the server healthy). Pure."""
    what = f"HTTP {status}, {ctype or 'no content type'}"
    if status == 200 and ctype == "application/json":
        try:
            data = decode_reply(body, "/api/version")
        except ValueError:
            return None, f"{what} that is not JSON: not an Ollama server"
        v = data.get("version") if isinstance(data, dict) else None
        if isinstance(v, str) and v.strip():
            return v.strip()[:_VERSION_MAX], None
        return None, f'{what} without a "version" string: not an Ollama server'
    if status == 404 and root is not None:
        if root[0] == 200 and root[1].lstrip().startswith(b"Ollama is running"):
            return None, None
    if status in (401, 403, 407):
        return None, f"{what}: access refused (credentials, or a proxy in front of Ollama)"
    if status >= 500 and status != 501:
        return None, f"{what}: server error (the server, or a proxy in front of it)"
    return None, f"{what}: not an Ollama server"


def _count(v: Any) -> int | None:
    """A byte count or length from JSON: a non-negative finite number (bools are not)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if isinstance(v, float) and math.isfinite(v) and v >= 0:
        return int(v)
    return None


def models_list(data: Any, path: str, key: str) -> list[Mapping[str, Any]]:
    """The ``key`` list of a decoded probe reply (its dict items), or ValueError naming
    ``path`` when the reply has no such list."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"malformed {path} reply: no {key!r} list")
    return [x for x in data[key] if isinstance(x, dict)]


def parse_loaded(items: Iterable[Mapping[str, Any]]) -> dict[str, LoadedModel]:
    """``/api/ps`` models by normalized name; malformed entries (a name that is not a
    string, a size that is not a non-negative finite number) are left out."""
    out: dict[str, LoadedModel] = {}
    for m in items:
        name = m.get("model") or m.get("name")
        if not isinstance(name, str) or not name:
            continue
        size = _count(m.get("size", 0))
        vram = _count(m.get("size_vram", 0))
        if size is None or vram is None:
            continue
        expires = m.get("expires_at")
        ctx = _count(m.get("context_length"))
        out[normalize_model_name(name)] = LoadedModel(
            name=name,
            size=size,
            size_vram=vram,
            expires_at=expires if isinstance(expires, str) else None,
            context_length=ctx or None,
        )
    return out


def parse_tags(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``/api/tags`` sizes by normalized name (0 when the size is unreadable)."""
    out: dict[str, int] = {}
    for m in items:
        name = m.get("model") or m.get("name")
        if isinstance(name, str) and name:
            out[normalize_model_name(name)] = _count(m.get("size")) or 0
    return out


def parse_digests(items: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``/api/tags`` digests by normalized name (which build of a model a server has)."""
    out: dict[str, str] = {}
    for m in items:
        name = m.get("model") or m.get("name")
        digest = m.get("digest")
        if isinstance(name, str) and name and isinstance(digest, str) and digest:
            out[normalize_model_name(name)] = digest
    return out


# ---------------------------------------------------------------------- learned speeds
DECAY = 0.3
"""Weight of a new sample in the learned speed averages (about the last five calls)."""

MAX_TOKENS_PER_S = 100_000.0
"""Fastest plausible generation of one stream (tokens/s): a tiny model on the fastest GPU
decodes a few thousand; more is a lying or broken reply."""
MIN_TOKENS_PER_S = 0.001
"""Slowest plausible generation (one token in 1,000 s): below it, a timing is nonsense."""
MAX_PHASE_S = 3600.0
"""Longest plausible prompt evaluation or model load of one call (seconds): a large model
from a slow disk loads in minutes, not hours."""


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
    answer length known from real calls) and its length teaches nothing.

    Implausible samples teach nothing (``old`` is returned): this is the one rule, written
    here. A sample is implausible when its generation speed is outside
    [:data:`MIN_TOKENS_PER_S`, :data:`MAX_TOKENS_PER_S`] tokens/s, or its prompt
    evaluation or load time is above :data:`MAX_PHASE_S` seconds, or any timing is not a
    finite number (one reply with 1e18 tokens/s or a 1e8 s load would otherwise rule the
    averages for dozens of calls)."""
    ec, ed = info.get("eval_count"), info.get("eval_duration")
    if not (type(ec) is int and ec > 0 and isinstance(ed, (int, float)) and 0 < ed < math.inf):
        return old
    tps = ec / (ed / 1e9)
    if not MIN_TOKENS_PER_S <= tps <= MAX_TOKENS_PER_S:
        return old
    ped = info.get("prompt_eval_duration")
    first = ped / 1e9 if isinstance(ped, (int, float)) and ped > 0 else 0.0
    ld = info.get("load_duration")
    load = ld / 1e9 if isinstance(ld, (int, float)) and ld / 1e9 > 0.25 else None
    if not first <= MAX_PHASE_S or (load is not None and not load <= MAX_PHASE_S):
        return old
    if old is None or old.samples <= 0:
        length = float(ec) if answer_tokens is None else answer_tokens
        return SpeedEstimate(tps, first, length, None if queued else load, 1)
    a = DECAY
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


def service_s(sp: SpeedEstimate | None) -> float:
    """Seconds one answer takes at speed ``sp`` (0 when unknown): what a re-plan watches."""
    return sp.first_token_s + sp.output_tokens / sp.tokens_per_s if sp else 0.0


# ---------------------------------------------------------------------- snapshots
@dataclass(frozen=True)
class BackendFacts:
    """What the router knows of one backend at one moment, copied out under its lock.

    Plain values only (no breaker object, no futures), so :func:`build_snapshots` is a
    pure function of them and of the request."""

    config: BackendConfig
    index: int
    probe: ProbeResult | None
    missing_until: float | None
    """Until when a learned 404 keeps the planned model off this backend."""
    shown: tuple[float, ArchInfo | None] | None
    """``/api/show`` of the planned model here: (read at, architecture or None)."""
    oom: tuple[int, float, str] | None
    """A learned out-of-memory mark of the planned model: (num_ctx, until, message)."""
    circuit: str
    retry_at: float | None
    allows: bool
    """The breaker would let a call through now (and no other worker holds the trial)."""
    load: int
    speed: SpeedEstimate | None


def capacity(cfg: BackendConfig, p: ProbeResult | None) -> tuple[int | None, str]:
    """Free bytes for models on ``cfg`` and where the figure comes from: the configured
    ``max_memory_gb`` less what loaded models hold, else the probe's reading."""
    if cfg.max_memory_gb is not None:
        used = 0
        if p and p.loaded:
            used = sum((m.size_vram if cfg.kind == "gpu" else m.size) for m in p.loaded.values())
        return max(0, int(cfg.max_memory_gb * 1024**3) - used), "max_memory_gb"
    if p is None:
        return None, "unknown"
    if cfg.kind == "gpu" and p.gpu_free is not None:
        return p.gpu_free, "nvml free VRAM"
    if cfg.kind == "cpu" and p.host_available is not None:
        return p.host_available, "MemAvailable"
    return None, p.capacity_source


def build_snapshots(
    facts: Iterable[BackendFacts], key: str, num_ctx: int, now: float, stale_after: float
) -> tuple[list[BackendSnapshot], int | None, ArchInfo | None, float]:
    """Snapshots of every backend for normalized model ``key``, the model's size from
    ``/api/tags`` and architecture from ``/api/show`` (first backend that knows them),
    and the time until which the snapshots stay true (a probe going stale, a mark
    expiring, a breaker's retry time)."""
    snaps: list[BackendSnapshot] = []
    valid_until = float("inf")
    tags_size: int | None = None
    arch: ArchInfo | None = None
    for f in facts:
        cfg = f.config
        p = f.probe if (f.probe and now - f.probe.at <= stale_after) else None
        if p is not None:
            valid_until = min(valid_until, p.at + stale_after)
        has_model: bool | None = None
        model_reason = None
        until = f.missing_until
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
        shown = f.shown
        if arch is None and shown is not None and shown[1] is not None:
            arch = shown[1]
        loaded = p.loaded.get(key) if (p and p.loaded) else None
        evictable = 0
        if p and p.loaded:
            evictable = sum(
                (m.size_vram if cfg.kind == "gpu" else m.size) for m in p.loaded.values()
            )
        free, source = capacity(cfg, p)
        oom_reason = None
        mark = f.oom
        if mark is not None and now < mark[1]:
            valid_until = min(valid_until, mark[1])
        if mark is not None and now < mark[1] and num_ctx >= mark[0]:
            oom_reason = f"num_ctx >= {mark[0]}: {mark[2]}"
        retry_at = f.retry_at
        if retry_at is not None and now < retry_at:
            # "trial call in N s" must be true when shown: re-plan every 0.1 s meanwhile.
            valid_until = min(valid_until, retry_at, now + 0.1)
        snaps.append(
            BackendSnapshot(
                name=cfg.name,
                kind=cfg.kind,
                url=cfg.safe_url,
                index=f.index,
                priority=cfg.priority,
                max_parallel=cfg.max_parallel,
                in_flight=f.load,
                circuit=f.circuit,
                circuit_allows=f.allows,
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
                speed=f.speed,
            )
        )
    return snaps, tags_size, arch, valid_until


# ---------------------------------------------------------------------- request sizing
def size_request(
    model: str,
    num_ctx: int,
    sizes: Mapping[str, float],
    tags_size: int | None,
    arch: ArchInfo | None,
    expected_tokens: float | None,
) -> RouteRequest:
    """The request a plan routes: weights and memory footprint of ``model`` at
    ``num_ctx``. A size the user put in ``sizes`` beats the server's ``/api/tags`` size; a
    built-in default does not. Raises ValueError on a bad value in ``sizes``."""
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
    return RouteRequest(
        model,
        num_ctx,
        weights.bytes,
        foot.total_bytes,
        weights.detail,
        foot.describe(),
        expected_tokens,
    )


def route_costs(
    req: RouteRequest, snaps: Sequence[BackendSnapshot], policy: RoutePolicy
) -> dict[str, tuple[float, float]]:
    """Per backend, the expected finish time of ``req`` with a free slot and the time each
    call queued ahead per slot adds: what the fleet's acquire re-checks spill-over with."""
    costs: dict[str, tuple[float, float]] = {}
    for sn in snaps:
        free = estimate_finish(replace(sn, in_flight=0), req, policy.prior)[0]
        one = estimate_finish(replace(sn, in_flight=sn.max_parallel), req, policy.prior)[0]
        costs[sn.name] = (free, max(0.0, one - free))
    return costs

"""The routing decision as a pure function over plain values.

Why pure: "which server, in which order, and why" is the part of a router that must be
right and explainable, and it is easiest to get right as a table of cases. Everything
here is data in, data out; the probes, NVML readings and counters that produce the
snapshots live in :mod:`langchain_contextharbor._prober` (probes) and
:mod:`langchain_contextharbor._router` (counters), and the snapshots are built in
:mod:`langchain_contextharbor._facts`.

The order of preference, most important first:

1. skip what cannot serve: circuit open, known down (fresh failed probe), model known
   to be absent (404 or not in ``/api/tags``);
2. demote a backend where this model at this context size ran out of memory recently;
3. demote a backend whose known capacity cannot hold the request (weights + KV cache
   + overhead, counting memory the model already holds there);
4. with spill-over on and some backend saturated (in-flight >= max_parallel), the
   *expected finish time* of this request on each backend (:func:`estimate_finish`):
   queue wait + cold load + time to first token + output tokens / tokens per second, from
   speeds learned per backend and model (Ollama's own timings in every final chunk) or,
   before any data, the policy's :class:`SpeedPrior` (a GPU much faster than a CPU). A
   saturated backend loses its place only to one expected to finish sooner: spill-over
   onto a CPU twenty times slower than a busy GPU would make the request later, not sooner.
   Where the prior alone kept the request off a free backend, the plan names that backend
   (``RoutePlan.unmeasured``) so that the router can measure it instead of assuming;
5. the preferred tier: GPU first when the request fits the GPU (capacity known) or,
   capacity unknown, when the weights are at most the size threshold (the design's table
   puts an 8 GB model on the GPU); CPU first otherwise;
6. within a tier (or across tiers with ``prefer_warm``), prefer the backend that has the
   model loaded fully, then partially, then cold;
7. configured priority, then configuration order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from langchain_contextharbor.errors import SkipRecord
from langchain_contextharbor.sizing import GIB, format_bytes

__all__ = [
    "BackendSnapshot",
    "Candidate",
    "LoadedModel",
    "RoutePlan",
    "RoutePolicy",
    "RouteRequest",
    "SpeedEstimate",
    "SpeedPrior",
    "estimate_finish",
    "plan_route",
]


@dataclass(frozen=True)
class LoadedModel:
    """A model as ``/api/ps`` lists it on one server."""

    name: str
    size: int
    size_vram: int
    expires_at: str | None = None
    context_length: int | None = None

    @property
    def gpu_percent(self) -> int:
        return round(100 * self.size_vram / self.size) if self.size > 0 else 0

    @property
    def placement(self) -> str:
        """Ollama's own words: "100% GPU", "100% CPU" or "48%/52% CPU/GPU"."""
        if self.size_vram <= 0:
            return "100% CPU"
        if self.size_vram >= self.size:
            return "100% GPU"
        g = self.gpu_percent
        return f"{100 - g}%/{g}% CPU/GPU"

    @property
    def fully_in_gpu(self) -> bool:
        return self.size > 0 and self.size_vram >= self.size


@dataclass(frozen=True)
class SpeedEstimate:
    """Learned speed of one model on one backend: decaying averages over successful calls,
    from the timings Ollama puts in every final chunk (``eval_count``/``eval_duration``,
    ``prompt_eval_duration``, ``load_duration``). Plain data, so a fleet can share it."""

    tokens_per_s: float
    """Generation speed (``eval_count / eval_duration``)."""
    first_token_s: float
    """Time to first token with the model loaded (prompt evaluation); falls fast on a
    quicker sample and rises slowly, so a queued request does not inflate it."""
    output_tokens: float
    """Average answer length (``eval_count``) seen for this model here."""
    load_s: float | None = None
    """Average cold load seen (``load_duration`` above a quarter second); None: none seen."""
    samples: int = 0


@dataclass(frozen=True)
class SpeedPrior:
    """What the router assumes about speed before it has measured a call on a backend.

    Defaults describe the case this package exists for: a GPU server about ten times
    faster per token than a CPU server (a 7B Q4 model: ~60 vs ~6 tokens/s). They only
    order backends while spilling over (some backend saturated); set them to what your
    servers do (``HybridChatOllama(speed_prior=SpeedPrior(...))``) or let the router learn.
    """

    gpu_tokens_per_s: float = 60.0
    cpu_tokens_per_s: float = 6.0
    gpu_first_token_s: float = 0.15
    cpu_first_token_s: float = 1.5
    output_tokens: float = 200.0
    """Expected answer length before one was seen for the model."""
    load_gib_per_s: float = 2.0
    """Cold-load speed (weights read from disk) before a load was seen."""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and v != float("inf")):
                raise ValueError(f"SpeedPrior.{name} must be a finite number > 0, got {v!r}")


@dataclass(frozen=True)
class BackendSnapshot:
    """Everything the router knows about one backend at planning time."""

    name: str
    kind: str
    url: str
    index: int = 0
    priority: int = 0
    max_parallel: int = 1
    in_flight: int = 0
    circuit: str = "closed"
    circuit_allows: bool = True
    retry_in: float | None = None
    healthy: bool | None = None
    health_reason: str | None = None
    has_model: bool | None = None
    model_reason: str | None = None
    loaded: LoadedModel | None = None
    evictable_bytes: int = 0
    """Memory held on this backend by models Ollama can unload to make room."""
    free_bytes: int | None = None
    """Free VRAM (gpu) or available RAM (cpu) in bytes; None when unknown."""
    capacity_source: str = "unknown"
    oom_reason: str | None = None
    """Set while a learned out-of-memory mark for this model/context is active."""
    speed: SpeedEstimate | None = None
    """Learned speed of this model here (None: none yet; the policy's prior applies)."""


@dataclass(frozen=True)
class RouteRequest:
    model: str
    num_ctx: int
    weights_bytes: int
    needed_bytes: int
    size_detail: str
    footprint_detail: str = ""
    expected_tokens: float | None = None
    """Learned answer length of this model (any backend); None: the prior's."""


@dataclass(frozen=True)
class RoutePolicy:
    size_threshold_bytes: int
    prefer_warm: bool = False
    """Prefer a backend that has the model loaded even across tiers (skip a GPU load)."""
    spillover: bool = True
    """When the best backend is saturated, send to another fitting one if it is expected
    to finish the request sooner."""
    prior: SpeedPrior = field(default_factory=SpeedPrior)
    """Speeds assumed before any were learned."""


@dataclass(frozen=True)
class Candidate:
    backend: str
    kind: str
    url: str
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "kind": self.kind,
            "url": self.url,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class RoutePlan:
    """Ordered candidates for one request, each with the reasons for its position."""

    model: str
    request: RouteRequest
    candidates: tuple[Candidate, ...]
    skipped: tuple[SkipRecord, ...] = ()
    summary: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    unmeasured: tuple[str, ...] = ()
    """Backends with a free slot that this plan kept behind a saturated one on the
    strength of a speed *prior* alone (nothing measured there for this model yet). Only
    evidence can say whether spilling onto them would pay; the router measures them with a
    small background request (``calibrate_speeds``)."""
    passed_over: tuple[str, ...] = ()
    """Skipped backends of the tier the request prefers (down, circuit open, model
    missing): the plan's first choice was one of them, so an answer from this plan is a
    fallback (``response_metadata["contextharbor"]["fallback"]``)."""

    @property
    def backends(self) -> list[str]:
        return list(self.backend_names)

    @cached_property
    def backend_names(self) -> tuple[str, ...]:
        """The candidates' backend names in order (computed once per plan: plans are
        cached, and every call and attempt asks)."""
        return tuple(c.backend for c in self.candidates)

    @property
    def primary(self) -> str | None:
        return self.candidates[0].backend if self.candidates else None

    @property
    def fallback(self) -> str | None:
        return self.candidates[1].backend if len(self.candidates) > 1 else None

    def explain(self) -> str:
        lines = [f"route for {self.model!r}: {self.summary}"]
        for i, c in enumerate(self.candidates, 1):
            lines.append(f"  {i}. {c.backend} [{c.kind}] {c.url}")
            lines += [f"       - {r}" for r in c.reasons]
        for s in self.skipped:
            lines.append(f"  skipped {s.backend} [{s.url}]: {s.reason}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "num_ctx": self.request.num_ctx,
            "weights_bytes": self.request.weights_bytes,
            "needed_bytes": self.request.needed_bytes,
            "size": self.request.size_detail,
            "footprint": self.request.footprint_detail,
            "summary": self.summary,
            "candidates": [c.as_dict() for c in self.candidates],
            "skipped": [
                {"backend": s.backend, "url": s.url, "reason": s.reason} for s in self.skipped
            ],
            "notes": list(self.notes),
        }


def _available(b: BackendSnapshot) -> int | None:
    if b.free_bytes is None:
        return None
    held = b.loaded.size_vram if (b.loaded and b.kind == "gpu") else 0
    if b.kind == "cpu" and b.loaded:
        held = b.loaded.size
    return b.free_bytes + max(held, b.evictable_bytes)


def _capacity_words(b: BackendSnapshot, avail: int | None) -> str:
    """Where the available figure comes from, split as ``contextharbor check`` shows it.

    The figure is the free memory plus what loaded models hold (Ollama unloads those to
    make room), so the label names both parts instead of calling the sum "MemAvailable".
    """
    if avail is None or b.free_bytes is None or avail <= b.free_bytes:
        return b.capacity_source
    held = format_bytes(avail - b.free_bytes)
    return f"{b.capacity_source} {format_bytes(b.free_bytes)} + {held} held by loaded models"


def _fits(b: BackendSnapshot, req: RouteRequest) -> bool | None:
    avail = _available(b)
    if avail is None:
        return None
    return req.needed_bytes <= avail


def estimate_finish(b: BackendSnapshot, req: RouteRequest, prior: SpeedPrior) -> tuple[float, str]:
    """Expected seconds until ``req`` would be answered on ``b``, and how that was made up.

    queue wait (requests ahead per slot x one request's time) + cold load (when /api/ps
    says the model is not loaded) + time to first token + output tokens / tokens per s.
    """
    sp = b.speed if (b.speed is not None and b.speed.samples > 0) else None
    if sp is not None:
        tps, first, src = sp.tokens_per_s, sp.first_token_s, f"learned, {sp.samples} calls"
    elif b.kind == "gpu":
        tps, first, src = prior.gpu_tokens_per_s, prior.gpu_first_token_s, "gpu prior"
    else:
        tps, first, src = prior.cpu_tokens_per_s, prior.cpu_first_token_s, "cpu prior"
    tokens = req.expected_tokens or (sp.output_tokens if sp else prior.output_tokens)
    service = first + tokens / max(tps, 1e-9)
    ahead = max(0, b.in_flight - b.max_parallel + 1)
    wait = ahead * service / max(1, b.max_parallel)
    load = 0.0
    if b.healthy is True and b.loaded is None:
        if sp is not None and sp.load_s is not None:
            load = sp.load_s
        else:
            load = req.weights_bytes / (prior.load_gib_per_s * GIB)
    eta = wait + load + service
    text = (
        f"expected to finish in {eta:.2f}s = queue {wait:.2f}s ({ahead} ahead) + load "
        f"{load:.2f}s + first token {first:.2f}s + {tokens:.0f} tok at {tps:.1f} tok/s ({src})"
    )
    return eta, text


def plan_route(
    req: RouteRequest, backends: Sequence[BackendSnapshot], policy: RoutePolicy
) -> RoutePlan:
    """Order ``backends`` for ``req``. Pure and deterministic."""
    skipped: list[SkipRecord] = []
    usable: list[BackendSnapshot] = []
    for b in backends:
        if not b.circuit_allows:
            wait = f", trial call in {b.retry_in:.1f}s" if b.retry_in is not None else ""
            skipped.append(SkipRecord(b.name, b.url, f"circuit {b.circuit}{wait}"))
        elif b.healthy is False:
            skipped.append(SkipRecord(b.name, b.url, f"down: {b.health_reason or 'probe failed'}"))
        elif b.has_model is False:
            skipped.append(
                SkipRecord(
                    b.name, b.url, b.model_reason or f"model {req.model!r} not on this server"
                )
            )
        else:
            usable.append(b)

    # A GPU that just ran out of memory on this request does not get to pick the tier.
    gpus = [b for b in usable if b.kind == "gpu" and not b.oom_reason]
    gpu_fit = [_fits(b, req) for b in gpus]
    need = format_bytes(req.needed_bytes)
    if any(f is True for f in gpu_fit):
        tier = "gpu"
        why_tier = f"gpu first: the request ({need}) fits a GPU's free memory"
    elif gpus and all(f is False for f in gpu_fit):
        tier = "cpu"
        why_tier = f"cpu first: the request ({need}) does not fit any GPU's free memory"
    elif not gpus and any(b.kind == "gpu" for b in usable):
        tier = "cpu"
        why_tier = "cpu first: every GPU backend ran out of memory on this model recently"
    elif req.weights_bytes <= policy.size_threshold_bytes:
        tier = "gpu"
        why_tier = (
            f"gpu first: weights {format_bytes(req.weights_bytes)} <= threshold "
            f"{format_bytes(policy.size_threshold_bytes)} (GPU capacity unknown)"
        )
    else:
        tier = "cpu"
        why_tier = (
            f"cpu first: weights {format_bytes(req.weights_bytes)} > threshold "
            f"{format_bytes(policy.size_threshold_bytes)}"
        )

    kinds = {b.name: b.kind for b in backends}
    passed_over = tuple(s.backend for s in skipped if kinds.get(s.backend) == tier)
    if usable and not any(b.kind == tier for b in usable):
        # Nothing of the chosen tier can take the call (down, circuit open, no model, or
        # none configured): the other tier leads, and the summary says so.
        gone = "; ".join(f"{s.backend} {s.reason}" for s in skipped if kinds.get(s.backend) == tier)
        tier, moot = ("cpu", "gpu") if tier == "gpu" else ("gpu", "cpu")
        why_tier = (
            f"{tier} first: no {moot} backend can take the call ({gone or 'none configured'})"
        )

    any_free_slot = any(b.in_flight < b.max_parallel for b in usable)
    # Finish times decide only while spilling over: with a free slot everywhere the tier
    # and residency rules below keep their meaning (and their cheap, stable order).
    by_eta = policy.spillover and not all(b.in_flight < b.max_parallel for b in usable)
    scored: list[tuple[tuple[float, ...], BackendSnapshot, list[str]]] = []
    for b in usable:
        reasons: list[str] = []
        oom = 1 if b.oom_reason else 0
        if oom:
            reasons.append(f"demoted: recent out-of-memory here ({b.oom_reason})")
        fits = _fits(b, req)
        avail = _available(b)
        mem_word = "VRAM" if b.kind == "gpu" else "RAM"
        source = _capacity_words(b, avail)
        if fits is False:
            reasons.append(
                f"demoted: needs {need}, only {format_bytes(avail or 0)} {mem_word} "
                f"available ({source})"
            )
        elif fits is True:
            reasons.append(
                f"fits: needs {need}, {format_bytes(avail or 0)} {mem_word} available ({source})"
            )
        else:
            reasons.append("capacity unknown")
        saturated = b.in_flight >= b.max_parallel
        eta, eta_text = estimate_finish(b, req, policy.prior)
        load = f"{b.in_flight}/{b.max_parallel} in flight"
        if saturated and policy.spillover and any_free_slot:
            reasons.append(f"saturated ({load}); spill-over by expected finish time")
        elif saturated and policy.spillover:
            reasons.append(f"saturated ({load}); every backend is, soonest finish first")
        elif saturated:
            reasons.append(f"saturated ({load}), will queue (spill-over off)")
        else:
            reasons.append(load)
        reasons.append(eta_text)
        sat = eta if by_eta else 0.0
        tier_rank = 0 if b.kind == tier else 1
        reasons.append(f"{b.kind} tier ({'preferred' if tier_rank == 0 else 'fallback'})")
        if b.loaded is None:
            warm = 2
            reasons.append("model not loaded (cold load)")
        elif b.loaded.fully_in_gpu or b.kind == "cpu":
            warm = 0
            reasons.append(f"model loaded ({b.loaded.placement})")
        else:
            warm = 1
            reasons.append(f"model partially offloaded ({b.loaded.placement})")
        if b.priority:
            reasons.append(f"priority {b.priority}")
        if b.circuit == "half_open" or (b.circuit == "open" and b.circuit_allows):
            reasons.append("circuit half-open: this is its trial call")
        if policy.prefer_warm:
            key = (oom, 1 if fits is False else 0, sat, warm, tier_rank, b.priority, b.index)
        else:
            key = (oom, 1 if fits is False else 0, sat, tier_rank, warm, b.priority, b.index)
        scored.append((key, b, reasons))
    scored.sort(key=lambda t: t[0])
    notes: list[str] = []
    if by_eta and scored:
        # Say in one line what the finish times changed (or kept) against the plain order.
        plain = min(scored, key=lambda t: t[0][:2] + t[0][3:])[1]
        first = scored[0][1]
        t_first = estimate_finish(first, req, policy.prior)[0]
        t_plain = estimate_finish(plain, req, policy.prior)[0]
        if first.name != plain.name:
            notes.append(
                f"spill-over: {first.name} expected to finish in {t_first:.2f}s, "
                f"{plain.name} ({plain.in_flight}/{plain.max_parallel} in flight) "
                f"in {t_plain:.2f}s"
            )
        elif len(scored) > 1 and first.in_flight >= first.max_parallel:
            other = scored[1][1]
            notes.append(
                f"no spill-over: {first.name} expected to finish in {t_first:.2f}s even "
                f"queued, {other.name} in "
                f"{estimate_finish(other, req, policy.prior)[0]:.2f}s"
            )
    unmeasured: list[str] = []
    if by_eta and scored and scored[0][1].in_flight >= scored[0][1].max_parallel:
        # Spill-over was declined. Where the backend passed over has a free slot, nothing
        # else against it (memory, an out-of-memory mark) and only the prior's speed, the
        # decision rests on an assumption: name it, so evidence can be gathered.
        for rank, b, _ in scored[1:]:
            if (
                b.in_flight < b.max_parallel
                and rank[0] == 0
                and rank[1] == 0
                and (b.speed is None or b.speed.samples <= 0)
            ):
                unmeasured.append(b.name)
    if scored and scored[0][1].kind != tier:
        why_tier = _why_other_tier(tier, why_tier, scored, policy)
    candidates = tuple(Candidate(b.name, b.kind, b.url, tuple(r)) for _, b, r in scored)
    summary = (
        f"{req.size_detail}; {req.footprint_detail}; {why_tier}"
        if req.footprint_detail
        else f"{req.size_detail}; {why_tier}"
    )
    return RoutePlan(
        req.model,
        req,
        candidates,
        tuple(skipped),
        summary,
        tuple(notes),
        tuple(unmeasured),
        passed_over,
    )


def _why_other_tier(
    tier: str,
    why_tier: str,
    scored: Sequence[tuple[tuple[float, ...], BackendSnapshot, list[str]]],
    policy: RoutePolicy,
) -> str:
    """The summary's tier clause when the first candidate is not of the preferred tier,
    although one of that tier is usable, so that the header of ``contextharbor route``
    agrees with the order below it: the first rank component in which the leader beats
    the tier's best backend names what put it ahead (memory, spill-over, warmth, priority).
    """
    lead = scored[0][1]
    key_lead = scored[0][0]
    key_best, best = next((key, b) for key, b, _ in scored if b.kind == tier)
    i = next(
        (i for i, (a, b) in enumerate(zip(key_lead, key_best, strict=True)) if a != b),
        len(key_lead),
    )
    warm_at = 3 if policy.prefer_warm else 4
    causes = {
        0: f"{best.name} ran out of memory on this model recently",
        1: f"the request does not fit {best.name}",
        2: "spill-over: it is expected to finish sooner",
        warm_at: f"prefer_warm: the model is loaded on {lead.name}",
        5: f"priority {lead.priority} < {best.priority}",
    }
    cause = causes.get(i, "its position in the configuration")
    return f"{why_tier}; but {lead.name} ({lead.kind}) is tried first: {cause}"

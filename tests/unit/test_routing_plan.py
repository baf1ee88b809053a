"""Table-driven tests for the pure routing decision ``plan_route``."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from langchain_contextharbor import (
    BackendSnapshot,
    Candidate,
    LoadedModel,
    RoutePlan,
    RoutePolicy,
    RouteRequest,
    SkipRecord,
    SpeedEstimate,
    plan_route,
)

GIB = 1024**3
MODEL = "llama3.1:8b"
POLICY = RoutePolicy(size_threshold_bytes=8 * GIB)


def req(weights_gb: float, needed_gb: float | None = None, footprint: str = "") -> RouteRequest:
    needed = weights_gb if needed_gb is None else needed_gb
    return RouteRequest(
        model=MODEL,
        num_ctx=4096,
        weights_bytes=int(weights_gb * GIB),
        needed_bytes=int(needed * GIB),
        size_detail=f"{weights_gb} GiB weights",
        footprint_detail=footprint,
    )


def gpu(name: str = "gpu", index: int = 0, **kw: Any) -> BackendSnapshot:
    return BackendSnapshot(name=name, kind="gpu", url=f"http://{name}:11434", index=index, **kw)


def cpu(name: str = "cpu", index: int = 1, **kw: Any) -> BackendSnapshot:
    return BackendSnapshot(name=name, kind="cpu", url=f"http://{name}:11435", index=index, **kw)


def speed(tps: float, first: float = 0.1, tokens: float = 100, load: float | None = None) -> Any:
    return SpeedEstimate(tps, first, tokens, load, samples=5)


def loaded(size_gb: float, vram_gb: float) -> LoadedModel:
    return LoadedModel(name=MODEL, size=int(size_gb * GIB), size_vram=int(vram_gb * GIB))


@dataclass(frozen=True)
class Case:
    id: str
    request: RouteRequest
    backends: list[BackendSnapshot]
    order: list[str]
    policy: RoutePolicy = POLICY
    skipped: list[str] = field(default_factory=list)
    summary_has: tuple[str, ...] = ()
    reasons_have: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reasons_lack: dict[str, tuple[str, ...]] = field(default_factory=dict)


CASES = [
    # --- tier by size threshold when GPU capacity is unknown
    Case(
        "unknown capacity, small model: gpu first",
        req(4),
        [gpu(), cpu()],
        ["gpu", "cpu"],
        summary_has=("gpu first", "4.0 GiB <= threshold 8.0 GiB", "capacity unknown"),
        reasons_have={
            "gpu": ("capacity unknown", "gpu tier (preferred)"),
            "cpu": ("capacity unknown", "cpu tier (fallback)"),
        },
    ),
    Case(
        "unknown capacity, exactly at threshold: gpu first (the design's table)",
        req(8),
        [gpu(), cpu()],
        ["gpu", "cpu"],
        summary_has=("gpu first", "8.0 GiB <= threshold 8.0 GiB"),
        reasons_have={"gpu": ("gpu tier (preferred)",), "cpu": ("cpu tier (fallback)",)},
    ),
    Case(
        "unknown capacity, just above threshold: cpu first",
        req(8.01),
        [gpu(), cpu()],
        ["cpu", "gpu"],
        summary_has=("cpu first", "> threshold 8.0 GiB"),
        reasons_have={"cpu": ("cpu tier (preferred)",), "gpu": ("gpu tier (fallback)",)},
    ),
    Case("unknown capacity, big model: cpu first", req(40), [gpu(), cpu()], ["cpu", "gpu"]),
    Case(
        "cpu listed first in config, small model: still gpu first",
        req(2),
        [cpu(index=0), gpu(index=1)],
        ["gpu", "cpu"],
    ),
    Case(
        "threshold is a policy value",
        req(4),
        [gpu(), cpu()],
        ["cpu", "gpu"],
        policy=RoutePolicy(size_threshold_bytes=3 * GIB),
    ),
    # --- tier by fit when GPU capacity is known
    Case(
        "big model that fits the GPU's free memory: gpu first",
        req(20, 22),
        [gpu(free_bytes=24 * GIB, capacity_source="nvml free VRAM"), cpu()],
        ["gpu", "cpu"],
        summary_has=("gpu first", "fits a GPU's free memory", "22.0 GiB"),
        reasons_have={"gpu": ("fits: needs 22.0 GiB, 24.0 GiB VRAM available (nvml free VRAM)",)},
    ),
    Case(
        "small model that does not fit the GPU: cpu first",
        req(4, 6),
        [gpu(free_bytes=4 * GIB, capacity_source="nvml free VRAM"), cpu()],
        ["cpu", "gpu"],
        summary_has=("cpu first", "does not fit any GPU's free memory"),
        reasons_have={
            "gpu": ("demoted: needs 6.0 GiB, only 4.0 GiB VRAM available (nvml free VRAM)",)
        },
    ),
    Case(
        "exact fit counts as fitting", req(4, 6), [gpu(free_bytes=6 * GIB), cpu()], ["gpu", "cpu"]
    ),
    Case(
        "model already on the GPU: its VRAM counts as available",
        req(4, 6),
        [gpu(free_bytes=4 * GIB, loaded=loaded(5, 3)), cpu()],
        ["gpu", "cpu"],
        reasons_have={
            "gpu": (
                "fits: needs 6.0 GiB, 7.0 GiB VRAM available",
                "model partially offloaded (40%/60% CPU/GPU)",
            )
        },
    ),
    Case(
        "evictable memory of Ollama's loaded models counts",
        req(4, 6),
        [gpu(free_bytes=2 * GIB, evictable_bytes=5 * GIB), cpu()],
        ["gpu", "cpu"],
        reasons_have={"gpu": ("7.0 GiB VRAM available",)},
    ),
    Case(
        "evictable already includes the model's own share (no double count)",
        req(4, 8),
        [gpu(free_bytes=2 * GIB, loaded=loaded(3, 3), evictable_bytes=5 * GIB), cpu()],
        ["cpu", "gpu"],
        reasons_have={"gpu": ("only 7.0 GiB VRAM available",)},
    ),
    Case(
        "cpu counts the model's whole size, not size_vram",
        req(20, 30),
        [gpu(free_bytes=1 * GIB), cpu(free_bytes=10 * GIB, loaded=loaded(25, 0))],
        ["cpu", "gpu"],
        reasons_have={
            "cpu": ("fits: needs 30.0 GiB, 35.0 GiB RAM available", "model loaded (100% CPU)")
        },
    ),
    Case(
        "fits nowhere: cpu first, both demoted",
        req(60, 70),
        [gpu(free_bytes=24 * GIB), cpu(free_bytes=32 * GIB)],
        ["cpu", "gpu"],
        reasons_have={"gpu": ("demoted: needs 70.0 GiB",), "cpu": ("demoted: needs 70.0 GiB",)},
    ),
    Case(
        "fitting cpu beats a non-fitting gpu even for a small model",
        req(4, 6),
        [gpu(free_bytes=1 * GIB), cpu(free_bytes=16 * GIB)],
        ["cpu", "gpu"],
    ),
    Case(
        "one gpu fits, another does not: the misfit goes below the cpu",
        req(10, 12),
        [gpu("small", 0, free_bytes=8 * GIB), gpu("big", 1, free_bytes=40 * GIB), cpu(index=2)],
        ["big", "cpu", "small"],
        summary_has=("gpu first",),
    ),
    Case(
        "one gpu does not fit, other unknown: threshold decides",
        req(4, 6),
        [gpu("a", 0, free_bytes=1 * GIB), gpu("b", 1), cpu(index=2)],
        ["b", "cpu", "a"],
        summary_has=("GPU capacity unknown",),
    ),
    # --- out-of-memory demotion
    Case(
        "recent OOM on the gpu demotes it",
        req(4),
        [gpu(oom_reason="num_ctx >= 32768: requires more system memory"), cpu()],
        ["cpu", "gpu"],
        reasons_have={"gpu": ("demoted: recent out-of-memory here (num_ctx >= 32768",)},
    ),
    Case(
        "OOM outranks a capacity misfit",
        req(4, 6),
        [gpu(oom_reason="cuda oom", free_bytes=24 * GIB), cpu(free_bytes=1 * GIB)],
        ["cpu", "gpu"],
    ),
    # --- saturation and spill-over: by expected finish time
    Case(
        "saturated gpu, cpu ten times slower (prior): the request waits for the gpu",
        req(4),
        [gpu(in_flight=1, max_parallel=1), cpu()],
        ["gpu", "cpu"],
        reasons_have={
            "gpu": (
                "saturated (1/1 in flight); spill-over by expected finish time",
                "expected to finish in 6.97s = queue 3.48s (1 ahead)",
                "(gpu prior)",
            ),
            "cpu": ("0/1 in flight", "expected to finish in 34.83s", "(cpu prior)"),
        },
    ),
    Case(
        "saturated gpu spills over to an equally fast cpu (learned)",
        req(4),
        [gpu(in_flight=1, max_parallel=1, speed=speed(20)), cpu(speed=speed(20))],
        ["cpu", "gpu"],
        reasons_have={
            "gpu": ("saturated (1/1 in flight); spill-over by expected finish time",),
            "cpu": ("expected to finish in 5.10s", "(learned, 5 calls)"),
        },
    ),
    Case(
        "the gpu's queue gets deep enough: a slower cpu finishes sooner",
        req(4),
        [gpu(in_flight=12, max_parallel=1), cpu()],
        ["cpu", "gpu"],
    ),
    Case(
        "learned: cpu twenty times slower keeps a queue of six on the gpu",
        req(4),
        [gpu(in_flight=5, speed=speed(200)), cpu(speed=speed(10))],
        ["gpu", "cpu"],
    ),
    Case(
        "spill-over off: saturated gpu keeps its place and queues",
        req(4),
        [gpu(in_flight=1, max_parallel=1, speed=speed(20)), cpu(speed=speed(20))],
        ["gpu", "cpu"],
        policy=RoutePolicy(size_threshold_bytes=8 * GIB, spillover=False),
        reasons_have={"gpu": ("saturated (1/1 in flight), will queue",)},
        reasons_lack={"gpu": ("spill-over by",)},
    ),
    Case(
        "no free slot anywhere, equal queues and speeds: tier order kept",
        req(4),
        [gpu(in_flight=1, max_parallel=1, speed=speed(20)), cpu(in_flight=1, speed=speed(20))],
        ["gpu", "cpu"],
        reasons_have={"gpu": ("saturated (1/1 in flight); every backend is",)},
        reasons_lack={"gpu": ("spill-over by",), "cpu": ("spill-over by",)},
    ),
    Case(
        "no free slot anywhere: soonest finish first",
        req(4),
        [gpu(in_flight=3, max_parallel=1, speed=speed(20)), cpu(in_flight=1, speed=speed(20))],
        ["cpu", "gpu"],
        reasons_have={"gpu": ("saturated (3/1 in flight); every backend is, soonest finish",)},
    ),
    Case(
        "queue depth is per slot",
        req(4),
        [
            gpu(in_flight=5, max_parallel=4, speed=speed(20)),
            cpu(in_flight=2, max_parallel=1, speed=speed(20)),
        ],
        ["gpu", "cpu"],
    ),
    Case(
        "a cold load counts: a warm cpu beats a queued cold gpu of the same speed",
        req(4),
        [
            gpu(in_flight=1, healthy=True, speed=speed(20, load=30)),
            cpu(healthy=True, loaded=loaded(4, 0), speed=speed(20)),
        ],
        ["cpu", "gpu"],
        reasons_have={"gpu": ("load 30.00s",)},
    ),
    Case(
        "no cold load assumed before a probe said where the model is",
        req(4),
        [gpu(in_flight=1, speed=speed(20, load=30)), cpu(speed=speed(20, load=30))],
        ["cpu", "gpu"],
        reasons_have={"gpu": ("load 0.00s",)},
    ),
    Case(
        "spill-over off: saturation never reorders",
        req(4),
        [gpu(in_flight=9), cpu(in_flight=1)],
        ["gpu", "cpu"],
        policy=RoutePolicy(size_threshold_bytes=8 * GIB, spillover=False),
        reasons_have={"gpu": ("will queue (spill-over off)",)},
    ),
    Case(
        "max_parallel counts slots: 3/4 is not saturated",
        req(4),
        [gpu(in_flight=3, max_parallel=4), cpu()],
        ["gpu", "cpu"],
        reasons_have={"gpu": ("3/4 in flight",)},
    ),
    Case(
        "spill-over to another gpu; the queued gpu still beats a slow cpu",
        req(4),
        [gpu("a", 0, in_flight=1), gpu("b", 1), cpu(index=2)],
        ["b", "a", "cpu"],
    ),
    Case(
        "spill-over needs a saturated backend: a faster cpu does not reorder free slots",
        req(4),
        [gpu(speed=speed(5)), cpu(speed=speed(50))],
        ["gpu", "cpu"],
    ),
    Case(
        "no spill-over onto a backend the request does not fit",
        req(20, 22),
        [gpu(free_bytes=24 * GIB, in_flight=1), cpu(free_bytes=8 * GIB)],
        ["gpu", "cpu"],
    ),
    # --- residency
    Case(
        "warm gpu preferred within the gpu tier",
        req(4),
        [gpu("a", 0), gpu("b", 1, loaded=loaded(4, 4)), cpu(index=2)],
        ["b", "a", "cpu"],
        reasons_have={"b": ("model loaded (100% GPU)",), "a": ("model not loaded (cold load)",)},
    ),
    Case(
        "full offload beats partial beats cold",
        req(4),
        [gpu("cold", 0), gpu("part", 1, loaded=loaded(4, 2)), gpu("full", 2, loaded=loaded(4, 4))],
        ["full", "part", "cold"],
        reasons_have={"part": ("model partially offloaded (50%/50% CPU/GPU)",)},
    ),
    Case(
        "warm cpu does not beat a cold gpu across tiers",
        req(4),
        [gpu(), cpu(loaded=loaded(4, 0))],
        ["gpu", "cpu"],
    ),
    Case(
        "prefer_warm: warm cpu beats a cold gpu",
        req(4),
        [gpu(), cpu(loaded=loaded(4, 0))],
        ["cpu", "gpu"],
        policy=RoutePolicy(size_threshold_bytes=8 * GIB, prefer_warm=True),
    ),
    Case(
        "prefer_warm does not override a misfit",
        req(4, 6),
        [gpu(free_bytes=24 * GIB), cpu(free_bytes=1 * GIB, loaded=loaded(4, 0))],
        ["gpu", "cpu"],
        policy=RoutePolicy(size_threshold_bytes=8 * GIB, prefer_warm=True),
    ),
    # --- priority, then configuration order
    Case(
        "lower priority number first within a tier",
        req(4),
        [gpu("a", 0, priority=5), gpu("b", 1), cpu(index=2)],
        ["b", "a", "cpu"],
        reasons_have={"a": ("priority 5",)},
        reasons_lack={"b": ("priority",)},
    ),
    Case(
        "priority never crosses tiers", req(4), [gpu(priority=9), cpu(priority=-9)], ["gpu", "cpu"]
    ),
    Case(
        "ties keep configuration order",
        req(4),
        [gpu("a", 0), gpu("b", 1), gpu("c", 2)],
        ["a", "b", "c"],
    ),
    Case(
        "index, not list position, is the configuration order",
        req(4),
        [gpu("c", 2), gpu("a", 0), gpu("b", 1)],
        ["a", "b", "c"],
    ),
    # --- skips
    Case(
        "open circuit, down and model-missing backends are skipped",
        req(4),
        [
            gpu("open", 0, circuit="open", circuit_allows=False, retry_in=3.25),
            gpu("down", 1, healthy=False, health_reason="connect: [Errno 111] Connection refused"),
            gpu("nomodel", 2, has_model=False),
            gpu("missing404", 3, has_model=False, model_reason="model 'x' not found here (404)"),
            cpu(index=4),
        ],
        ["cpu"],
        skipped=["open", "down", "nomodel", "missing404"],
    ),
    Case(
        "unknown health and unknown model presence are usable",
        req(4),
        [gpu(healthy=None, has_model=None), cpu(healthy=True, has_model=True)],
        ["gpu", "cpu"],
    ),
    Case(
        "circuit due for its trial call is a candidate, marked",
        req(4),
        [gpu(circuit="open", circuit_allows=True, retry_in=-1.0), cpu()],
        ["gpu", "cpu"],
        reasons_have={"gpu": ("circuit half-open: this is its trial call",)},
    ),
    Case(
        "half-open circuit with its trial in flight is skipped",
        req(4),
        [gpu(circuit="half_open", circuit_allows=False), cpu()],
        ["cpu"],
        skipped=["gpu"],
    ),
    Case(
        "everything skipped: empty plan",
        req(4),
        [gpu(healthy=False), cpu(circuit="open", circuit_allows=False)],
        [],
        skipped=["gpu", "cpu"],
    ),
    Case("no backends at all", req(4), [], []),
]


def _reasons(plan: RoutePlan, backend: str) -> str:
    (c,) = [c for c in plan.candidates if c.backend == backend]
    return " | ".join(c.reasons)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_plan_table(case: Case) -> None:
    plan = plan_route(case.request, case.backends, case.policy)
    assert plan.backends == case.order
    assert [s.backend for s in plan.skipped] == case.skipped
    for text in case.summary_has:
        assert text in plan.summary, plan.summary
    for name, texts in case.reasons_have.items():
        got = _reasons(plan, name)
        for text in texts:
            assert text in got, f"{name}: {text!r} not in {got!r}"
    for name, texts in case.reasons_lack.items():
        got = _reasons(plan, name)
        for text in texts:
            assert text not in got, f"{name}: {text!r} in {got!r}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_plan_is_pure_and_order_independent(case: Case) -> None:
    """Same inputs in any list order give the same plan (order comes from ``index``)."""
    first = plan_route(case.request, case.backends, case.policy)
    again = plan_route(case.request, list(case.backends), case.policy)
    assert first == again
    if len({b.index for b in case.backends}) == len(case.backends):
        for perm in itertools.islice(itertools.permutations(case.backends), 24):
            other = plan_route(case.request, list(perm), case.policy)
            assert other.backends == first.backends
            assert {s.backend for s in other.skipped} == {s.backend for s in first.skipped}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.order])
def test_every_candidate_explains_every_factor(case: Case) -> None:
    plan = plan_route(case.request, case.backends, case.policy)
    for c in plan.candidates:
        text = " | ".join(c.reasons)
        assert any(w in text for w in ("fits:", "demoted: needs", "capacity unknown")), text
        assert "in flight" in text, text
        assert " tier (" in text, text
        assert any(w in text for w in ("model loaded", "partially offloaded", "cold load")), text


def test_skip_reasons() -> None:
    plan = plan_route(
        req(4),
        [
            gpu("a", 0, circuit="open", circuit_allows=False, retry_in=3.25),
            gpu("b", 1, circuit="open", circuit_allows=False),
            gpu("c", 2, healthy=False, health_reason="connect refused"),
            gpu("d", 3, healthy=False),
            gpu("e", 4, has_model=False),
            gpu("f", 5, has_model=False, model_reason="model 'x' not in this server's /api/tags"),
            gpu("g", 6, circuit="open", circuit_allows=False, healthy=False, has_model=False),
        ],
        POLICY,
    )
    assert [(s.backend, s.reason) for s in plan.skipped] == [
        ("a", "circuit open, trial call in 3.2s"),
        ("b", "circuit open"),
        ("c", "down: connect refused"),
        ("d", "down: probe failed"),
        ("e", f"model {MODEL!r} not on this server"),
        ("f", "model 'x' not in this server's /api/tags"),
        ("g", "circuit open"),  # the circuit is reported first
    ]
    assert plan.skipped[0] == SkipRecord("a", "http://a:11434", "circuit open, trial call in 3.2s")
    assert plan.candidates == ()
    assert (plan.primary, plan.fallback) == (None, None)


def test_primary_fallback_and_candidates() -> None:
    plan = plan_route(req(4), [gpu(), cpu()], POLICY)
    assert (plan.primary, plan.fallback) == ("gpu", "cpu")
    assert plan.model == MODEL and plan.request == req(4)
    c = plan.candidates[0]
    assert isinstance(c, Candidate)
    assert (c.backend, c.kind, c.url) == ("gpu", "gpu", "http://gpu:11434")
    single = plan_route(req(4), [cpu()], POLICY)
    assert (single.primary, single.fallback) == ("cpu", None)


def test_explain_lists_candidates_reasons_and_skips() -> None:
    plan = plan_route(
        req(4, footprint="weights + 0.5 GiB KV cache"),
        [gpu(), cpu(), gpu("dead", 2, healthy=False, health_reason="refused")],
        POLICY,
    )
    text = plan.explain()
    lines = text.splitlines()
    assert lines[0] == f"route for {MODEL!r}: {plan.summary}"
    assert "  1. gpu [gpu] http://gpu:11434" in lines
    assert "  2. cpu [cpu] http://cpu:11435" in lines
    assert "  skipped dead [http://dead:11434]: down: refused" in lines
    for c in plan.candidates:
        for r in c.reasons:
            assert f"       - {r}" in lines
    assert plan.summary.startswith("4 GiB weights; weights + 0.5 GiB KV cache; gpu first")


def test_summary_without_footprint() -> None:
    plan = plan_route(req(4), [gpu()], POLICY)
    assert plan.summary.startswith("4 GiB weights; gpu first")


def test_as_dict_is_json_ready_and_complete() -> None:
    plan = plan_route(req(4, 5), [gpu(), cpu(healthy=False)], POLICY)
    d = plan.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["model"] == MODEL
    assert (d["num_ctx"], d["weights_bytes"], d["needed_bytes"]) == (4096, 4 * GIB, 5 * GIB)
    assert d["size"] == "4 GiB weights" and d["summary"] == plan.summary
    assert d["candidates"] == [
        {
            "backend": "gpu",
            "kind": "gpu",
            "url": "http://gpu:11434",
            "reasons": list(plan.candidates[0].reasons),
        }
    ]
    assert d["skipped"] == [
        {"backend": "cpu", "url": "http://cpu:11435", "reason": "down: probe failed"}
    ]
    assert d["notes"] == []


def test_plan_does_not_mutate_inputs() -> None:
    backends = [gpu(loaded=loaded(4, 4), free_bytes=GIB), cpu()]
    snapshot = [replace(b) for b in backends]
    plan_route(req(4), backends, POLICY)
    assert backends == snapshot


@pytest.mark.parametrize(
    ("size", "vram", "placement", "percent", "full"),
    [
        (4, 4, "100% GPU", 100, True),
        (4, 5, "100% GPU", 125, True),
        (4, 0, "100% CPU", 0, False),
        (4, 1, "75%/25% CPU/GPU", 25, False),
        (10, 4.8, "52%/48% CPU/GPU", 48, False),
        (0, 0, "100% CPU", 0, False),
    ],
)
def test_loaded_model_placement(
    size: float, vram: float, placement: str, percent: int, full: bool
) -> None:
    m = loaded(size, vram)
    assert (m.placement, m.gpu_percent, m.fully_in_gpu) == (placement, percent, full)


def test_oom_marked_gpu_does_not_decide_the_tier() -> None:
    big = req(40, 42)
    oom_gpu = gpu("a", 0, oom_reason="num_ctx >= 4096: out of memory", free_bytes=48 * GIB)
    plan = plan_route(big, [oom_gpu, gpu("b", 1), cpu(index=2)], POLICY)
    assert plan.backends == ["cpu", "b", "a"]
    plan = plan_route(big, [oom_gpu, cpu(index=1)], POLICY)
    assert plan.backends == ["cpu", "a"]
    assert "cpu first" in plan.summary, plan.summary
    assert "cpu tier (preferred)" in _reasons(plan, "cpu")

"""Capacity-aware routing against stand-ins: VRAM (fake NVML from a real H200 reading),
/api/tags sizes, /api/show architecture, /api/ps residency, learned OOM, availability, load."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from langchain_contextharbor import BackendConfig, HybridChatOllama, SpeedPrior, Timeouts
from langchain_contextharbor.sizing import GIB
from langchain_contextharbor.testing import (
    ChatTurn,
    EngineEvent,
    Fault,
    OllamaStandIn,
    ScriptedEngine,
    StandInModel,
)
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.fake_nvml import FakeNVML
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

# Roomy: nothing here provokes a timeout, and a probe or answer that timed out on a loaded
# CI machine would change the plan under test.
T = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
BIG_RAM = 512 * GIB
SMALL = "llama3.2:1b"
# 100 GiB of weights, 70B-class architecture: fits an idle H200 at num_ctx 4096 only.
BIG = StandInModel("custom-70b:latest", size=100 * GIB, parameter_size="70.6B")


@pytest.fixture
def nvml() -> FakeNVML:
    return FakeNVML.from_fixture(phase="idle")


@pytest.fixture
def build(
    ollama_standin_factory: StandInFactory, nvml: FakeNVML, clock: FakeClock
) -> Iterator[Callable[..., tuple[HybridChatOllama, dict[str, OllamaStandIn]]]]:
    made: list[HybridChatOllama] = []

    def _build(
        servers: dict[str, dict[str, Any]], **kw: Any
    ) -> tuple[HybridChatOllama, dict[str, OllamaStandIn]]:
        srvs: dict[str, OllamaStandIn] = {}
        configs: list[BackendConfig] = []
        for name, spec in servers.items():
            spec = dict(spec)
            kind = spec.pop("kind", "gpu")
            max_parallel = spec.pop("max_parallel", 1)
            spec.setdefault("gpu_fraction", 1.0 if kind == "gpu" else 0.0)
            srv = ollama_standin_factory(name=name, **spec)
            srvs[name] = srv
            configs.append(
                BackendConfig(
                    name=name, base_url=srv.url, kind=kind, timeouts=T, max_parallel=max_parallel
                )
            )
        params: dict[str, Any] = {
            "model": SMALL,
            "backends": configs,
            "clock": clock,
            "nvml": nvml,
            "host_memory": lambda: BIG_RAM,
            "background_probes": False,
        }
        params.update(kw)
        m = HybridChatOllama(**params)
        made.append(m)
        return m, srvs

    yield _build
    for m in made:
        m.close()


def _two(models: list[Any], **extra: Any) -> dict[str, dict[str, Any]]:
    return {
        "gpu": {"models": models, **extra.get("gpu", {})},
        "cpu": {"kind": "cpu", "models": models, **extra.get("cpu", {})},
    }


def test_large_model_goes_cpu_first_and_reason_says_why(build: Callable[..., Any]) -> None:
    huge = StandInModel("llama3.1:405b", size=230 * GIB, parameter_size="405B")
    model, _ = build(_two([SMALL, huge]))
    model.refresh("llama3.1:405b")
    plan = model.select_backend("llama3.1:405b")
    assert plan.backends == ["cpu", "gpu"]
    assert "does not fit any GPU" in plan.summary
    assert any("nvml" in r for r in plan.candidates[1].reasons)
    small = model.select_backend(SMALL)
    assert small.backends == ["gpu", "cpu"] and "fits a GPU" in small.summary


def test_unknown_capacity_uses_the_size_threshold(build: Callable[..., Any]) -> None:
    broken = FakeNVML.from_fixture(fail_init=True)
    model, _ = build(_two([SMALL, "llama3.1:70b"]), nvml=broken)
    model.refresh()
    assert model.select_backend("llama3.1:70b").backends == ["cpu", "gpu"]
    plan = model.select_backend(SMALL)
    assert plan.backends == ["gpu", "cpu"] and "capacity unknown" in plan.summary


def test_model_missing_from_size_table_is_sized_from_tags(build: Callable[..., Any]) -> None:
    broken = FakeNVML.from_fixture(fail_init=True)
    custom = StandInModel("my-model:latest", size=30 * GIB, parameter_size="34B")
    model, _ = build(_two([SMALL, custom]), nvml=broken)
    before = model.select_backend("my-model")  # nothing known yet: tag gives no size
    assert before.request.weights_bytes == 0
    model.refresh("my-model")
    after = model.select_backend("my-model")
    assert after.request.weights_bytes == 30 * GIB
    assert "/api/tags" in after.request.size_detail
    assert after.backends == ["cpu", "gpu"]


def test_num_ctx_can_push_a_fitting_model_off_the_gpu(build: Callable[..., Any]) -> None:
    model, _ = build(_two([SMALL, BIG]))
    model.refresh(BIG.name)
    assert model.select_backend(BIG.name, num_ctx=4096).backends == ["gpu", "cpu"]
    plan = model.select_backend(BIG.name, num_ctx=131072)
    assert plan.backends == ["cpu", "gpu"]
    assert "num_ctx 131072" in plan.request.footprint_detail


def test_another_process_taking_vram_changes_the_route(
    build: Callable[..., Any],
    nvml: FakeNVML,
    clock: FakeClock,
) -> None:
    model, _ = build(_two([SMALL, BIG]))
    model.refresh(BIG.name)
    assert model.select_backend(BIG.name, num_ctx=32768).primary == "gpu"
    nvml.set_phase("while_holding")  # another process holds 40 GiB
    clock.advance(model.probe_ttl + 1)
    model.refresh(BIG.name)
    assert model.select_backend(BIG.name, num_ctx=32768).primary == "cpu"
    nvml.set_phase("after_release")
    model.refresh(BIG.name)
    assert model.select_backend(BIG.name, num_ctx=32768).primary == "gpu"


def test_two_gpus_prefer_the_one_with_the_model_loaded(build: Callable[..., Any]) -> None:
    model, srvs = build(
        {
            "gpu-a": {"models": [SMALL]},
            "gpu-b": {"models": [SMALL], "loaded": [SMALL]},
            "cpu": {"kind": "cpu", "models": [SMALL], "loaded": [SMALL]},
        }
    )
    model.refresh()
    plan = model.select_backend()
    assert plan.backends == ["gpu-b", "gpu-a", "cpu"]
    assert any("model loaded (100% GPU)" in r for r in plan.candidates[0].reasons)
    assert model.invoke("hi").response_metadata["backend"] == "gpu-b"
    assert srvs["gpu-a"].requests_to("/api/chat") == []


def test_warm_cpu_copy_does_not_beat_a_fitting_gpu_unless_asked(
    build: Callable[..., Any],
) -> None:
    spec = _two([SMALL], cpu={"loaded": [SMALL]})
    model, _ = build(spec)
    model.refresh()
    assert model.select_backend().backends == ["gpu", "cpu"]
    warm_first, _ = build(spec, prefer_warm=True)
    warm_first.refresh()
    assert warm_first.select_backend().backends == ["cpu", "gpu"]


def test_partial_offload_is_reported(build: Callable[..., Any]) -> None:
    model, _ = build(_two([SMALL], gpu={"loaded": [SMALL], "gpu_fraction": 0.52}))
    model.refresh()
    reasons = " ".join(model.select_backend().candidates[0].reasons)
    assert "partially offloaded (48%/52% CPU/GPU)" in reasons


def test_oom_on_gpu_falls_back_and_is_remembered_for_the_cooldown_only(
    build: Callable[..., Any],
    clock: FakeClock,
) -> None:
    model, srvs = build(_two([SMALL]), oom_cooldown=60)
    gpu = srvs["gpu"]
    gpu.inject(Fault.OOM, count=1)
    first = model.invoke("a")
    assert first.response_metadata["backend"] == "cpu"
    assert first.response_metadata["contextharbor"]["attempts"][0]["category"] == "out_of_memory"
    assert model.select_backend().backends == ["cpu", "gpu"]
    assert model.invoke("b").response_metadata["backend"] == "cpu"
    assert len(gpu.requests_to("/api/chat")) == 1
    # A smaller context is still worth a try on the GPU; a bigger one is not.
    assert model.select_backend(num_ctx=2048).primary == "gpu"
    assert model.select_backend(num_ctx=8192).primary == "cpu"
    assert model.stats()["gpu"]["circuit"] == "closed"  # OOM is about the model, not the server
    clock.advance(61)
    assert model.invoke("c").response_metadata["backend"] == "gpu"


def test_model_missing_on_gpu_goes_to_cpu_without_a_failed_request(
    build: Callable[..., Any],
) -> None:
    model, srvs = build(
        {"gpu": {"models": ["other:1b"]}, "cpu": {"kind": "cpu", "models": [SMALL]}}
    )
    model.refresh()
    plan = model.select_backend()
    assert plan.backends == ["cpu"]
    assert "not in this server's /api/tags" in plan.skipped[0].reason
    msg = model.invoke("hi")
    assert msg.response_metadata["backend"] == "cpu"
    assert msg.response_metadata["contextharbor"]["attempts"] == []
    assert srvs["gpu"].requests_to("/api/chat") == []


def test_404_is_learned_without_probes(build: Callable[..., Any]) -> None:
    model, srvs = build(
        {"gpu": {"models": ["other:1b"]}, "cpu": {"kind": "cpu", "models": [SMALL]}}
    )
    assert model.invoke("a").response_metadata["backend"] == "cpu"  # 404 on GPU, fell back
    assert model.invoke("b").response_metadata["contextharbor"]["attempts"] == []
    assert len(srvs["gpu"].requests_to("/api/chat")) == 1


@dataclass
class _OverlapEngine(ScriptedEngine):
    """Scripted answers, counting how many chats generate at once across the stand-ins that
    share one ``overlap`` record (the stand-in calls ``chat`` inside its generation slot and
    streams its tokens while the generator is open)."""

    overlap: dict[str, int] = field(default_factory=lambda: {"active": 0, "peak": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chat(self, turn: ChatTurn) -> Iterator[EngineEvent]:
        with self.lock:
            self.overlap["active"] += 1
            self.overlap["peak"] = max(self.overlap["peak"], self.overlap["active"])
        try:
            yield from super().chat(turn)
        finally:
            with self.lock:
                self.overlap["active"] -= 1


def test_spillover_uses_both_servers_when_the_primary_is_busy(build: Callable[..., Any]) -> None:
    # What spill-over buys is that a burst runs on both servers at once instead of queueing
    # on the GPU. The stand-ins' engines record that overlap, so the test needs no stopwatch
    # (a wall-clock ratio flaked on a loaded CI machine); the speed-up itself is measured by
    # benchmarks/bench_routing.py.
    n = 6

    def spec() -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        overlap = {"active": 0, "peak": 0}
        lock = threading.Lock()
        engines = {k: _OverlapEngine(overlap=overlap, lock=lock) for k in ("gpu", "cpu")}
        servers = _two(
            [SMALL],
            gpu={"token_delay": 0.03, "loaded": [SMALL], "engine": engines["gpu"]},
            cpu={"token_delay": 0.03, "loaded": [SMALL], "engine": engines["cpu"]},
        )
        return servers, overlap

    async def burst(model: HybridChatOllama) -> list[str]:
        msgs = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(n)))
        return [m.response_metadata["backend"] for m in msgs]

    # Equal speeds (told, not learned: the default prior assumes a GPU 10x faster, and
    # spill-over now happens only when the other server is expected to finish sooner).
    equal = SpeedPrior(gpu_tokens_per_s=30, cpu_tokens_per_s=30, cpu_first_token_s=0.15)
    queue_spec, queue_overlap = spec()
    queued, _ = build(queue_spec, spillover=False, speed_prior=equal)
    used_queue = asyncio.run(burst(queued))
    spill_spec, spill_overlap = spec()
    spill, _ = build(spill_spec, spillover=True, speed_prior=equal)
    used_spill = asyncio.run(burst(spill))
    assert set(used_queue) == {"gpu"}
    assert queue_overlap["peak"] == 1  # one GPU slot: the burst queued, one answer at a time
    assert used_spill.count("gpu") == used_spill.count("cpu") == n // 2
    assert spill_overlap["peak"] == 2  # both servers generated at the same time
    assert queue_overlap["active"] == spill_overlap["active"] == 0


def test_a_size_the_user_sets_beats_the_servers(build: Callable[..., Any]) -> None:
    broken = FakeNVML.from_fixture(fail_init=True)
    custom = StandInModel("my-model:latest", size=2 * GIB, parameter_size="3B")
    model, _ = build(_two([SMALL, custom]), nvml=broken)
    model.refresh("my-model")
    assert model.select_backend("my-model").backends == ["gpu", "cpu"]  # 2 GiB from /api/tags
    model.model_sizes.update({"my-model:latest": 30})  # the design's override
    plan = model.select_backend("my-model")
    assert plan.backends == ["cpu", "gpu"] and "size table" in plan.request.size_detail


def test_a_model_exactly_at_the_threshold_goes_gpu_first(build: Callable[..., Any]) -> None:
    # The design's table puts llama3.2:11b (8 GB) on the GPU; the threshold is 8 GiB.
    broken = FakeNVML.from_fixture(fail_init=True)
    model, _ = build(_two([SMALL]), nvml=broken)
    plan = model.select_backend("llama3.2:11b")
    assert plan.request.weights_bytes == 8 * GIB
    assert plan.backends == ["gpu", "cpu"]
    assert "8.0 GiB <= threshold 8.0 GiB" in plan.summary

"""Routing judgement in the situations a GPU + CPU pair meets daily, over real HTTP:
the first call of a fresh instance, recovery after an outage, learned speeds, warm hangs.

Clocks are injected; nothing here sleeps to wait for a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_contextharbor import BackendConfig, HybridChatOllama, Timeouts
from langchain_contextharbor.sizing import GIB
from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.fake_nvml import FakeNVML
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

T = Timeouts(connect=0.5, first_token=5.0, idle=2.0, probe=2.0)
SMALL = "llama3.2:1b"
QWEN = "qwen2.5:7b"

Build = Callable[..., tuple[HybridChatOllama, OllamaStandIn, OllamaStandIn]]


@pytest.fixture
def build(ollama_standin_factory: StandInFactory, clock: FakeClock) -> Iterator[Build]:
    """A fresh model over a new GPU and CPU stand-in; background probes ON (the default)."""
    made: list[HybridChatOllama] = []

    def _build(
        gpu_models: list[Any],
        cpu_models: list[Any],
        *,
        gpu: dict[str, Any] | None = None,
        cpu: dict[str, Any] | None = None,
        timeouts: Timeouts = T,
        **kw: Any,
    ) -> tuple[HybridChatOllama, OllamaStandIn, OllamaStandIn]:
        g = ollama_standin_factory(name="gpu", models=gpu_models, gpu_fraction=1.0, **(gpu or {}))
        c = ollama_standin_factory(name="cpu", models=cpu_models, gpu_fraction=0.0, **(cpu or {}))
        params: dict[str, Any] = {
            "model": SMALL,
            "backends": [
                BackendConfig(name="gpu", base_url=g.url, kind="gpu", timeouts=timeouts),
                BackendConfig(name="cpu", base_url=c.url, kind="cpu", timeouts=timeouts),
            ],
            "clock": clock,
            "nvml": FakeNVML.from_fixture(fail_init=True),  # capacity unknown: size rules
            "host_memory": lambda: 512 * GIB,
            "first_probe_wait": 10.0,  # returns as soon as the probes are in
        }
        params.update(kw)
        m = HybridChatOllama(**params)
        made.append(m)
        return m, g, c

    yield _build
    for m in made:
        m.close()


# ---------------------------------------------------------------- first call on facts
def test_first_call_of_a_fresh_instance_skips_a_gpu_without_the_model(build: Build) -> None:
    model, gpu, _ = build([SMALL], [SMALL, QWEN], model=QWEN)
    msg = model.invoke("hi")
    meta = msg.response_metadata["contextharbor"]
    assert msg.response_metadata["backend"] == "cpu"
    assert meta["attempts"] == []
    assert any("not in this server's /api/tags" in s["reason"] for s in meta["skipped"])
    assert gpu.requests_to("/api/chat") == []


def test_first_async_call_of_a_fresh_instance_skips_a_gpu_without_the_model(
    build: Build,
) -> None:
    model, gpu, _ = build([SMALL], [SMALL, QWEN], model=QWEN)
    msg = asyncio.run(model.ainvoke("hi"))
    assert msg.response_metadata["backend"] == "cpu"
    assert msg.response_metadata["contextharbor"]["attempts"] == []
    assert gpu.requests_to("/api/chat") == []


def test_first_stream_of_a_fresh_instance_skips_a_gpu_without_the_model(build: Build) -> None:
    model, gpu, _ = build([SMALL], [SMALL, QWEN], model=QWEN)

    async def go() -> str:
        first = None
        async for chunk in model.astream("hi"):
            first = first or chunk.response_metadata.get("backend")
        return str(first)

    assert asyncio.run(go()) == "cpu"
    chunks = list(model.stream("again"))
    assert chunks[0].response_metadata["backend"] == "cpu"
    assert gpu.requests_to("/api/chat") == []


def test_first_call_sizes_an_unlisted_model_from_tags(build: Build) -> None:
    custom = StandInModel("my-model:latest", size=30 * GIB, parameter_size="34B")
    model, gpu, _ = build([SMALL, custom], [SMALL, custom], model="my-model")
    plan = model.select_backend()
    assert plan.backends == ["cpu", "gpu"], plan.explain()
    assert "/api/tags" in plan.request.size_detail
    assert model.invoke("hi").response_metadata["backend"] == "cpu"
    assert gpu.requests_to("/api/chat") == []


def test_the_first_probe_wait_is_bounded(build: Build) -> None:
    # The GPU accepts and never answers, its probe would take the whole 2 s probe timeout:
    # the first plan waits only first_probe_wait, then plans with what it has.
    model, gpu, _ = build([SMALL], [SMALL, QWEN], model=QWEN, first_probe_wait=0.05)
    gpu.inject(Fault.ACCEPT_HANG)
    model.select_backend()
    assert model.router.get("gpu").probe is None  # still in flight
    assert model.router._primed  # later plans never wait
    gpu.clear_faults()


def test_no_wait_when_probes_are_off(build: Build) -> None:
    model, _, _ = build([SMALL], [SMALL, QWEN], model=QWEN, background_probes=False)
    model.select_backend()
    assert all(b.probe is None and b.probe_future is None for b in model.router.backends)

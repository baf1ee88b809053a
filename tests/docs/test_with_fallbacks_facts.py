"""What ``ChatOllama(...).with_fallbacks([...])`` does and does not do, shown on stand-ins.

The README compares HybridChatOllama with ``gpu.with_fallbacks([cpu])``. Every point of
that comparison is a test here, run against two Ollama stand-ins through the real
``ChatOllama``, so the README states only what is shown:

- ``create_agent`` accepts ``with_fallbacks`` (langchain 1.x): it is *not* rejected;
- it is not a ``BaseChatModel``, for code that checks;
- it sends every call to the failing GPU first, again and again (no memory of failures);
- it sends every call to the GPU first even when the GPU lacks the model (no routing);
- a stream that fails after its first chunk raises the raw transport error, with no word
  on which server failed (HybridChatOllama cannot replay delivered text either, but says so
  with a typed error naming the backend).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langchain_ollama import ChatOllama

from langchain_contextharbor import (
    BackendConfig,
    ContextHarborError,
    HybridChatOllama,
    StreamInterruptedError,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
CPU_ONLY = "qwen2.5:0.5b"


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


@tool
def get_time(city: str) -> str:
    """Current local time in a city."""
    return f"12:00 in {city}"


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL])
    cpu = ollama_standin_factory(
        name="cpu", models=[MODEL, StandInModel(CPU_ONLY)], gpu_fraction=0.0
    )
    return gpu, cpu


def fallbacks(pair: tuple[OllamaStandIn, OllamaStandIn], model: str = MODEL) -> Runnable:  # type: ignore[type-arg]
    gpu, cpu = pair
    return ChatOllama(model=model, base_url=gpu.url).with_fallbacks(
        [ChatOllama(model=model, base_url=cpu.url)]
    )


@pytest.fixture
def hybrid(pair: tuple[OllamaStandIn, OllamaStandIn]) -> Iterator[HybridChatOllama]:
    gpu, cpu = pair
    llm = HybridChatOllama(
        model=MODEL,
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
        ],
        clock=FakeClock(),  # no cooldown passes during the test
        background_probes=False,
    )
    yield llm
    llm.close()


def test_create_agent_accepts_with_fallbacks_and_runs_its_tools(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    gpu.stop()  # the fallback must carry the agent, tools included
    agent = create_agent(fallbacks(pair), tools=[get_weather, get_time])
    out = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]})
    msgs = out["messages"]
    assert any(isinstance(m, ToolMessage) and "sunny in Paris" in m.content for m in msgs)
    assert isinstance(msgs[-1], AIMessage) and msgs[-1].content
    assert len(cpu.requests_to("/api/chat")) == 2  # tool call, then the answer


def test_with_fallbacks_is_not_a_chat_model_but_hybrid_is(
    pair: tuple[OllamaStandIn, OllamaStandIn], hybrid: HybridChatOllama
) -> None:
    assert not isinstance(fallbacks(pair), BaseChatModel)
    assert isinstance(hybrid, BaseChatModel)


def test_with_fallbacks_sends_every_call_to_the_failing_gpu_first(
    pair: tuple[OllamaStandIn, OllamaStandIn], hybrid: HybridChatOllama
) -> None:
    gpu, _ = pair
    gpu.inject(Fault.HTTP_ERROR, status=500)  # every chat request fails until cleared
    chain = fallbacks(pair)
    for _ in range(3):
        assert chain.invoke("hi").content
    assert len(gpu.requests_to("/api/chat")) == 3  # the GPU paid for every call

    gpu.clear_log()
    for _ in range(3):
        assert hybrid.invoke("hi").response_metadata["backend"] == "cpu"
    assert len(gpu.requests_to("/api/chat")) == 1  # then its circuit is open


def test_with_fallbacks_asks_the_gpu_for_a_model_it_does_not_have(
    pair: tuple[OllamaStandIn, OllamaStandIn], hybrid: HybridChatOllama
) -> None:
    gpu, _ = pair
    chain = fallbacks(pair, model=CPU_ONLY)
    for _ in range(2):
        assert chain.invoke("hi").content
    assert len(gpu.requests_to("/api/chat")) == 2  # a 404 on the GPU, every time

    gpu.clear_log()
    hybrid.refresh()  # /api/tags: the GPU server does not list the model
    msg = hybrid.invoke("hi", model=CPU_ONLY)
    assert msg.response_metadata["backend"] == "cpu"
    assert gpu.requests_to("/api/chat") == []


def test_a_stream_cut_after_its_first_chunks_is_not_failed_over_by_either(
    pair: tuple[OllamaStandIn, OllamaStandIn], hybrid: HybridChatOllama
) -> None:
    gpu, cpu = pair
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=2)
    got: list[str] = []
    with pytest.raises(Exception) as raw:
        for chunk in fallbacks(pair).stream("tell me a story"):
            got.append(str(chunk.content))
    assert got  # text had reached the caller
    assert not isinstance(raw.value, ContextHarborError)  # a raw transport error
    assert cpu.requests_to("/api/chat") == []  # no fallback after the first chunk

    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=2)
    with pytest.raises(StreamInterruptedError) as typed:
        for _ in hybrid.stream("tell me a story"):
            pass
    assert typed.value.backend == "gpu" and typed.value.delivered_chunks > 0

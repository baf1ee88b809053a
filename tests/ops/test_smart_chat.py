"""``smart_chat`` and the design's ``model_sizes`` / ``_select_backend`` usage, over stand-ins.

The default instance is built from ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL``, so each test
points those at its own stand-ins and resets the instance before and after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool

from langchain_contextharbor import (
    BackendConfig,
    HybridChatOllama,
    get_default_model,
    reset_default_model,
    smart_chat,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

SMALL = "llama3.2:1b"
CPU_ONLY = "qwen2.5:0.5b"


@pytest.fixture
def pair(
    ollama_standin_factory: StandInFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[OllamaStandIn, OllamaStandIn]]:
    gpu = ollama_standin_factory(name="gpu", models=[SMALL], gpu_fraction=1.0)
    cpu = ollama_standin_factory(
        name="cpu", models=[SMALL, StandInModel(CPU_ONLY)], gpu_fraction=0.0
    )
    monkeypatch.setenv("OLLAMA_GPU_URL", gpu.url)
    monkeypatch.setenv("OLLAMA_CPU_URL", cpu.url)
    reset_default_model()
    yield gpu, cpu
    reset_default_model()


def chats(srv: OllamaStandIn) -> list[str | None]:
    return [r.model for r in srv.requests_to("/api/chat")]


async def test_dict_messages_return_an_ai_message_naming_the_backend(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    answer = await smart_chat(
        SMALL, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata["backend"] == "gpu"
    assert answer.content == f"Hello from gpu ({SMALL}). You said: hi"
    assert answer.response_metadata["contextharbor"]["fallback"] is False
    assert chats(gpu) == [SMALL] and chats(cpu) == []


async def test_langchain_messages_and_a_plain_string(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    answer = await smart_chat(SMALL, [SystemMessage("Be brief."), HumanMessage("hello")])
    assert answer.response_metadata["backend"] == "gpu"
    assert str(answer.content).endswith("You said: hello")
    answer = await smart_chat(SMALL, "plain")
    assert str(answer.content).endswith("You said: plain")


async def test_one_default_instance_serves_every_model(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    _, cpu = pair
    first = await smart_chat(SMALL, [{"role": "user", "content": "one"}])
    llm = get_default_model()
    # CPU_ONLY is not on the GPU server: the GPU's 404 fails over to the CPU invisibly.
    second = await smart_chat(CPU_ONLY, [{"role": "user", "content": "two"}])
    assert get_default_model() is llm
    assert first.response_metadata["backend"] == "gpu"
    assert second.response_metadata["backend"] == "cpu"
    assert second.content == f"Hello from cpu ({CPU_ONLY}). You said: two"
    assert chats(cpu) == [CPU_ONLY]
    # Both calls went through the same router: its counters saw both.
    stats = llm.stats()
    assert stats["gpu"]["successes"] == 1 and stats["cpu"]["successes"] == 1


async def test_tools_are_bound_and_returned_as_tool_calls(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"sunny in {city}"

    answer = await smart_chat(
        SMALL, [{"role": "user", "content": "Weather in 'Paris'?"}], tools=[get_weather]
    )
    assert answer.response_metadata["backend"] == "gpu"
    assert [c["name"] for c in answer.tool_calls] == ["get_weather"]
    assert isinstance(answer.tool_calls[0]["args"]["city"], str)
    sent = pair[0].requests_to("/api/chat")[0].body
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]


async def test_failover_and_call_options(pair: tuple[OllamaStandIn, OllamaStandIn]) -> None:
    gpu, cpu = pair
    gpu.inject(Fault.HTTP_ERROR, count=1, status=500, message="boom")
    answer = await smart_chat(
        SMALL,
        [{"role": "user", "content": "hi"}],
        intent="fast",
        options={"num_ctx": 2048},
        keep_alive="5m",
    )
    assert answer.response_metadata["backend"] == "cpu"
    meta = answer.response_metadata["contextharbor"]
    assert meta["fallback"] is True and meta["attempts"][0]["backend"] == "gpu"
    body = cpu.requests_to("/api/chat")[0].body
    assert body["options"]["num_ctx"] == 2048 and body["keep_alive"] == "5m"


async def test_reset_rebuilds_from_the_environment(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llm = get_default_model()
    assert [c.name for c in llm.backend_configs] == ["gpu", "cpu"]
    monkeypatch.setenv("OLLAMA_GPU_URL", "")  # CPU only from now on
    assert get_default_model() is llm  # reused until reset
    reset_default_model()
    fresh = get_default_model()
    assert fresh is not llm
    assert [c.name for c in fresh.backend_configs] == ["cpu"]
    answer = await smart_chat(SMALL, [{"role": "user", "content": "hi"}])
    assert answer.response_metadata["backend"] == "cpu"


async def test_bad_arguments(pair: tuple[OllamaStandIn, OllamaStandIn]) -> None:
    with pytest.raises(ValueError, match="model"):
        await smart_chat("", [{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="empty"):
        await smart_chat(SMALL, [])


# ---------------------------------------------------------------------------- the design
def test_design_model_sizes_update_sends_a_big_model_cpu_first(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    llm = HybridChatOllama(
        model="my-model",
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url, kind="gpu"),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
        ],
        background_probes=False,  # plan on the size table alone, as the design did
    )
    try:
        # Unknown size: below the 8 GiB threshold, so GPU first.
        primary, fallback = llm._select_backend("my-model")
        assert primary is not None and fallback is not None
        assert (primary.url, fallback.url) == (gpu.url, cpu.url)
        # the design's own snippet
        assert (
            f"Primary: {primary.name}, Fallback: {fallback.name}" == "Primary: gpu, Fallback: cpu"
        )
        assert (primary.kind, fallback.kind) == ("gpu", "cpu")
        llm.model_sizes.update({"my-model:latest": 30})
        primary, fallback = llm._select_backend("my-model")
        assert primary is not None and fallback is not None
        assert (primary.name, fallback.name) == ("cpu", "gpu")
        plan = llm.select_backend("my-model")
        assert plan.backends == ["cpu", "gpu"]
        assert "size table" in plan.summary and "cpu first" in plan.summary
        # The table's key matches the untagged name, as Ollama resolves it.
        primary, fallback = llm._select_backend("my-model:latest")
        assert primary is not None and primary.url == cpu.url
    finally:
        llm.close()

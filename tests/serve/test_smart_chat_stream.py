"""``smart_chat_stream`` / ``asmart_chat_stream``: the one-call helper, streamed, over stand-ins.

The default instance is built from ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL``, so each test
points those at its own stand-ins and resets the instance before and after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import webkit

from langchain_contextharbor import (
    AllBackendsFailedError,
    StreamInterruptedError,
    asmart_chat_stream,
    get_default_model,
    reset_default_model,
    smart_chat,
    smart_chat_stream,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    return webkit.standins(ollama_standin_factory)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
GPU_ANSWER = f"Hello from gpu ({MODEL}). You said: hi"


@pytest.fixture
def env_pair(
    pair: tuple[OllamaStandIn, OllamaStandIn], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[OllamaStandIn, OllamaStandIn]]:
    gpu, cpu = pair
    monkeypatch.setenv("OLLAMA_GPU_URL", gpu.url)
    monkeypatch.setenv("OLLAMA_CPU_URL", cpu.url)
    reset_default_model()
    yield gpu, cpu
    reset_default_model()


async def test_the_stream_is_the_answer_in_pieces(
    env_pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    chunks = list(smart_chat_stream(MODEL, MESSAGES))
    assert len(chunks) > 1 and all(isinstance(c, str) and c for c in chunks)
    assert "".join(chunks) == GPU_ANSWER
    answer = await smart_chat(MODEL, MESSAGES)
    assert answer.content == "".join(chunks)
    # One instance behind all three forms: its counters saw every call.
    assert get_default_model().stats()["gpu"]["successes"] == 2


async def test_the_async_twin_streams_the_same(
    env_pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    chunks = [c async for c in asmart_chat_stream(MODEL, MESSAGES, intent="fast")]
    assert len(chunks) > 1 and "".join(chunks) == GPU_ANSWER
    assert [c async for c in asmart_chat_stream(MODEL, "hi")] == chunks  # a plain string too


@pytest.mark.parametrize("form", ["sync", "async"])
async def test_a_stopped_gpu_is_replaced_before_the_first_token(
    env_pair: tuple[OllamaStandIn, OllamaStandIn], form: str
) -> None:
    gpu, cpu = env_pair
    gpu.stop()
    if form == "sync":
        text = "".join(smart_chat_stream(MODEL, MESSAGES))
    else:
        text = "".join([c async for c in asmart_chat_stream(MODEL, MESSAGES)])
    assert text == f"Hello from cpu ({MODEL}). You said: hi"
    assert cpu.requests_to("/api/chat")


def test_a_cut_after_tokens_never_repeats_text(
    env_pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, _ = env_pair
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=3)
    got: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        for chunk in smart_chat_stream(MODEL, MESSAGES):
            got.append(chunk)
    text = "".join(got)
    assert got and GPU_ANSWER.startswith(text) and text != GPU_ANSWER  # a prefix, once
    assert "cpu" not in text
    assert info.value.backend == "gpu"


async def test_errors_are_the_typed_ones(
    env_pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    for srv in env_pair:
        srv.stop()
    with pytest.raises(AllBackendsFailedError):
        list(smart_chat_stream(MODEL, MESSAGES))
    with pytest.raises(AllBackendsFailedError):
        [c async for c in asmart_chat_stream(MODEL, MESSAGES)]
    with pytest.raises(ValueError, match="non-empty model tag"):
        list(smart_chat_stream(" ", MESSAGES))

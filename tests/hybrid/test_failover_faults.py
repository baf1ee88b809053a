"""Every stand-in fault on the primary (GPU), before and after the first chunk, sync and async.

Before anything reached the caller, a failure must move to the CPU invisibly (the answer is
the CPU's, whole, and ``response_metadata`` records the failed attempt with its category).
After the first chunk, ``invoke`` still falls back (it gathers the answer first), while a
stream raises ``StreamInterruptedError`` naming the backend and how much was delivered —
never a duplicated or spliced token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ollama
import pytest
from langchain_core.messages import AIMessageChunk

from langchain_contextharbor import (
    BackendConfig,
    HybridChatOllama,
    StreamInterruptedError,
    Timeouts,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn

# Short deadlines only where a deadline is how the fault is provoked (a hang, a slow first
# token): everywhere else, and always on the CPU that takes over, deadlines a loaded CI
# machine cannot run out of, so a 404 or a cut connection is never read as a timeout.
FAST = Timeouts(connect=0.5, first_token=0.6, idle=0.4, probe=0.5)
ROOMY = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
TIMED_FAULTS = {
    Fault.ACCEPT_HANG,
    Fault.HANG_BEFORE_FIRST_CHUNK,
    Fault.HANG_AFTER_HEADERS,
    Fault.SLOW_FIRST_TOKEN,
    Fault.HANG_MID_STREAM,
}
PROMPT = "tell me something"
CPU_ANSWER = "Hello from cpu (llama3.2:1b). You said: tell me something"

# (fault, inject kwargs, expected category of the failed GPU attempt)
BEFORE_FIRST_CHUNK: list[tuple[Fault, dict[str, Any], str]] = [
    (Fault.REFUSE, {}, "connect"),
    (Fault.ACCEPT_HANG, {}, "timeout"),
    (Fault.HANG_BEFORE_FIRST_CHUNK, {}, "timeout"),
    (Fault.HANG_AFTER_HEADERS, {}, "timeout"),
    (Fault.SLOW_FIRST_TOKEN, {"delay": 3.0}, "timeout"),
    (Fault.OOM, {}, "out_of_memory"),
    (Fault.BUSY, {}, "busy"),
    (Fault.MODEL_NOT_FOUND, {}, "model_not_found"),
    (
        Fault.HTTP_ERROR,
        {"status": 500, "message": "model runner has unexpectedly stopped"},
        "server_error",
    ),
    # An error before the first chunk is an NDJSON line (HTTP 200) only in Ollama
    # 0.12.0-0.12.5: the stand-in advertising 0.12.5 frames it so. From 0.12.6 it is a 500
    # JSON, a server error (test_error_before_first_chunk_from_0_12_6_is_a_server_error).
    (Fault.ERROR_MID_STREAM, {"after_chunks": 0, "version": "0.12.5"}, "stream_error"),
    (Fault.CUT_MID_STREAM, {"after_chunks": 0}, "transport"),
    (Fault.MALFORMED_LINE, {"after_chunks": 0}, "malformed"),
]
AFTER_FIRST_CHUNK: list[tuple[Fault, str]] = [
    (Fault.HANG_MID_STREAM, "timeout"),
    (Fault.CUT_MID_STREAM, "transport"),
    (Fault.ERROR_MID_STREAM, "stream_error"),
    (Fault.MALFORMED_LINE, "malformed"),
]


def _inject(srv: OllamaStandIn, fault: Fault, kw: dict[str, Any]) -> None:
    kw = dict(kw)
    if "version" in kw:  # the Ollama version the stand-in advertises, and frames errors as
        srv.config.version = kw.pop("version")
    if fault is Fault.REFUSE:
        srv.inject(fault)
    else:
        srv.inject(fault, count=1, **kw)


def _model(
    make_model: Callable[..., HybridChatOllama],
    pair: tuple[OllamaStandIn, OllamaStandIn],
    fault: Fault | None,
) -> HybridChatOllama:
    """A model whose GPU has FAST deadlines only when ``fault`` is provoked by one."""
    gpu, cpu = pair
    gpu_t = FAST if fault in TIMED_FAULTS else ROOMY
    return make_model(
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=gpu_t),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=ROOMY),
        ]
    )


def _ids(cases: list[Any]) -> list[str]:
    return [c[0].value for c in cases]


async def _collect_async(model: HybridChatOllama) -> list[AIMessageChunk]:
    return [c async for c in model.astream(PROMPT)]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("api", ["invoke", "stream"])
@pytest.mark.parametrize(
    ("fault", "kw", "category"), BEFORE_FIRST_CHUNK, ids=_ids(BEFORE_FIRST_CHUNK)
)
async def test_fault_before_first_chunk_falls_back_invisibly(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    fault: Fault,
    kw: dict[str, Any],
    category: str,
    api: str,
    mode: str,
) -> None:
    gpu, _cpu = pair
    model = _model(make_model, pair, fault)
    _inject(gpu, fault, kw)
    if api == "invoke":
        msg = model.invoke(PROMPT) if mode == "sync" else await model.ainvoke(PROMPT)
        text, meta = msg.content, msg.response_metadata
    else:
        chunks = list(model.stream(PROMPT)) if mode == "sync" else await _collect_async(model)
        text = "".join(str(c.content) for c in chunks)
        meta = chunks[0].response_metadata
        assert all("contextharbor" not in c.response_metadata for c in chunks[1:])
    assert text == CPU_ANSWER
    assert meta["backend"] == "cpu"
    info = meta["contextharbor"]
    assert info["fallback"] is True
    assert [(a["backend"], a["category"]) for a in info["attempts"]] == [("gpu", category)]
    assert info["route"] == ["gpu", "cpu"]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("api", ["invoke", "stream"])
async def test_error_before_first_chunk_from_0_12_6_is_a_server_error(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    api: str,
    mode: str,
) -> None:
    """At the version the stand-in advertises (0.14.3), an error met before any chunk is a
    500 JSON answer, as Ollama's streamResponse sends it: the router sees a server error
    and moves to the CPU just as invisibly."""
    gpu, _cpu = pair
    assert gpu.config.version == "0.14.3"
    model = _model(make_model, pair, Fault.ERROR_MID_STREAM)
    _inject(gpu, Fault.ERROR_MID_STREAM, {"after_chunks": 0})
    if api == "invoke":
        msg = model.invoke(PROMPT) if mode == "sync" else await model.ainvoke(PROMPT)
        text, meta = msg.content, msg.response_metadata
    else:
        chunks = list(model.stream(PROMPT)) if mode == "sync" else await _collect_async(model)
        text = "".join(str(c.content) for c in chunks)
        meta = chunks[0].response_metadata
    assert text == CPU_ANSWER
    info = meta["contextharbor"]
    assert [(a["backend"], a["category"]) for a in info["attempts"]] == [("gpu", "server_error")]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_slow_first_token_within_deadline_is_not_a_failure(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    mode: str,
) -> None:
    gpu, _ = pair
    model = make_model(timeouts=Timeouts(connect=10.0, first_token=10.0, idle=30.0))
    gpu.inject(Fault.SLOW_FIRST_TOKEN, count=1, delay=0.3)
    msg = model.invoke(PROMPT) if mode == "sync" else await model.ainvoke(PROMPT)
    assert msg.response_metadata["backend"] == "gpu"
    assert msg.response_metadata["contextharbor"]["attempts"] == []


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("fault", "category"), AFTER_FIRST_CHUNK, ids=_ids(AFTER_FIRST_CHUNK))
async def test_fault_after_first_chunk_invoke_still_falls_back(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    fault: Fault,
    category: str,
    mode: str,
) -> None:
    gpu, _ = pair
    model = _model(make_model, pair, fault)
    gpu.inject(fault, count=1, after_chunks=2)
    msg = model.invoke(PROMPT) if mode == "sync" else await model.ainvoke(PROMPT)
    assert msg.content == CPU_ANSWER
    attempts = msg.response_metadata["contextharbor"]["attempts"]
    assert [(a["backend"], a["category"]) for a in attempts] == [("gpu", category)]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("fault", "category"), AFTER_FIRST_CHUNK, ids=_ids(AFTER_FIRST_CHUNK))
async def test_fault_after_first_chunk_stream_raises_typed_error_without_duplicates(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    fault: Fault,
    category: str,
    mode: str,
) -> None:
    gpu, cpu = pair
    model = _model(make_model, pair, fault)
    gpu.inject(fault, count=1, after_chunks=2)
    got: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        if mode == "sync":
            for c in model.stream(PROMPT):
                got.append(str(c.content))
        else:
            async for c in model.astream(PROMPT):
                got.append(str(c.content))
    err = info.value
    assert err.backend == "gpu"
    assert err.delivered_chunks == 2 == len(got)
    assert err.delivered_chars == len("".join(got))
    assert "".join(got) == "Hello from"
    assert err.__cause__ is not None
    # Nothing was sent to the CPU: a retry there would have repeated "Hello from".
    assert cpu.requests_to("/api/chat") == []
    assert model.stats()["gpu"]["interrupted"] == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_bad_request_is_not_failed_over(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    mode: str,
) -> None:
    gpu, cpu = pair
    model = _model(make_model, pair, None)
    gpu.inject(Fault.HTTP_ERROR, count=1, status=400, message="invalid think value")
    with pytest.raises(ollama.ResponseError) as info:
        if mode == "sync":
            model.invoke(PROMPT)
        else:
            await model.ainvoke(PROMPT)
    assert info.value.status_code == 400
    assert cpu.requests_to("/api/chat") == []
    # A 400 says nothing about the server's health: its circuit stays closed.
    assert model.stats()["gpu"]["circuit"] == "closed"

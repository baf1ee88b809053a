"""Behaviour of HybridChatOllama beyond the fault table: deadlines, tools, probes, retries."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool

from langchain_contextharbor import (
    AllBackendsFailedError,
    BackendConfig,
    FailoverCategory,
    HybridChatOllama,
    Timeouts,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock

ROOMY = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)


def _gpu_with(
    pair: tuple[OllamaStandIn, OllamaStandIn], gpu_timeouts: Timeouts
) -> list[BackendConfig]:
    """Short deadlines on the GPU that a test provokes; the CPU that takes over gets deadlines
    a loaded CI machine cannot run out of (a 0.3 s idle one could end its answer too)."""
    gpu, cpu = pair
    return [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=gpu_timeouts),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=ROOMY),
    ]


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


@tool
def get_time(city: str) -> str:
    """Get the local time in a city."""
    return f"noon in {city}"


def test_idle_deadline_catches_a_mid_stream_stall_long_before_the_first_token_deadline(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, _ = pair
    model = make_model(backends=_gpu_with(pair, Timeouts(connect=1, first_token=60, idle=0.3)))
    gpu.inject(Fault.HANG_MID_STREAM, count=1, after_chunks=2)
    msg = model.invoke("hi")
    assert msg.response_metadata["backend"] == "cpu"
    (attempt,) = msg.response_metadata["contextharbor"]["attempts"]
    assert attempt["category"] == "timeout"
    assert attempt["elapsed_ms"] < 10_000  # the 60 s first-token deadline did not apply


def test_a_slow_first_token_is_not_judged_by_the_idle_deadline(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, _ = pair
    # The first token comes 2 s late, twice the idle deadline; the chunks after it come at
    # once, and 1 s between two of them is more than a loaded machine takes.
    model = make_model(timeouts=Timeouts(connect=10, first_token=30, idle=1.0, probe=10))
    gpu.inject(Fault.SLOW_FIRST_TOKEN, count=1, delay=2.0)  # a cold load, say
    msg = model.invoke("hi")
    assert msg.response_metadata["backend"] == "gpu"
    assert msg.response_metadata["contextharbor"]["attempts"] == []


def test_tools_are_replayed_unchanged_on_the_fallback(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, cpu = pair
    llm = make_model().bind_tools([get_weather, get_time])
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=0)
    msg = llm.invoke("What is the weather in Paris?")
    assert msg.response_metadata["backend"] == "cpu"
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    sent_gpu = gpu.requests_to("/api/chat")[0].body["tools"]
    sent_cpu = cpu.requests_to("/api/chat")[0].body["tools"]
    assert sent_gpu == sent_cpu
    assert [t["function"]["name"] for t in sent_cpu] == ["get_weather", "get_time"]


def test_tool_choice_is_honoured_as_far_as_ollama_allows(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, _ = pair
    model = make_model()
    model.bind_tools([get_weather, get_time], tool_choice="get_time").invoke("time in Oslo?")
    model.bind_tools([get_weather, get_time], tool_choice="none").invoke("weather?")
    model.bind_tools([get_weather], tool_choice="any").invoke("weather in Rome?")
    bodies = [r.body for r in gpu.requests_to("/api/chat")]
    assert [t["function"]["name"] for t in bodies[0]["tools"]] == ["get_time"]
    assert not bodies[1].get("tools")
    assert [t["function"]["name"] for t in bodies[2]["tools"]] == ["get_weather"]
    with pytest.raises(ValueError, match="not one of the bound tools"):
        model.bind_tools([get_weather], tool_choice="nope")


def test_every_chatollama_parameter_reaches_every_backend(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, cpu = pair
    model = make_model(
        temperature=0.2,
        num_ctx=2048,
        max_tokens=64,
        seed=7,
        top_k=5,
        keep_alive="10m",
        stop=["END"],
    )
    model.invoke("a")
    gpu.inject(Fault.REFUSE)
    model.invoke("b")
    for srv in (gpu, cpu):
        body = [r for r in srv.requests_to("/api/chat") if r.body][-1].body
        assert body["options"] == {
            "temperature": 0.2,
            "num_ctx": 2048,
            "num_predict": 64,
            "seed": 7,
            "top_k": 5,
            "stop": ["END"],
        }
        assert body["keep_alive"] == "10m"


def test_per_call_model_override_routes_and_traces_that_model(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, _ = pair
    model = make_model()
    msg = model.invoke("hi", model="qwen2.5:0.5b")
    assert gpu.requests_to("/api/chat")[-1].body["model"] == "qwen2.5:0.5b"
    assert msg.response_metadata["contextharbor"]["model"] == "qwen2.5:0.5b"
    assert model._get_ls_params(model="qwen2.5:0.5b")["ls_model_name"] == "qwen2.5:0.5b"


def test_max_retries_makes_another_pass_when_every_server_was_busy(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, cpu = pair
    for srv in (gpu, cpu):
        srv.inject(Fault.BUSY, count=1)
    with pytest.raises(AllBackendsFailedError):
        make_model().invoke("x")
    for srv in (gpu, cpu):
        srv.inject(Fault.BUSY, count=1)
    msg = make_model(max_retries=1).invoke("x")
    cats = [a["category"] for a in msg.response_metadata["contextharbor"]["attempts"]]
    assert cats == ["busy", "busy"] and msg.response_metadata["backend"] == "gpu"


def test_exceptions_to_handle_replaces_the_classifier(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, _ = pair
    only_connect = make_model(exceptions_to_handle=(httpx.ConnectError,))
    gpu.inject(Fault.OOM, count=1)
    with pytest.raises(ollama.ResponseError):
        only_connect.invoke("x")
    by_category = make_model(exceptions_to_handle=(FailoverCategory.OUT_OF_MEMORY,))
    gpu.inject(Fault.OOM, count=1)
    assert by_category.invoke("x").response_metadata["backend"] == "cpu"


def test_probes_are_shared_between_threads_and_tasks(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, cpu = pair
    for srv in (gpu, cpu):
        srv.inject(Fault.SLOW_FIRST_TOKEN, delay=0.3, paths=("/api/version",))
    model = make_model()

    async def tasks() -> None:
        await asyncio.gather(*(model.arefresh() for _ in range(4)))

    threads = [threading.Thread(target=model.refresh) for _ in range(4)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join(10)
    # 4 threads and 4 tasks asked at once: each server saw one probe.
    assert len(gpu.requests_to("/api/version")) == 1
    assert len(cpu.requests_to("/api/version")) == 1


def test_fresh_probes_stay_off_the_hot_path(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    clock: FakeClock,
) -> None:
    gpu, _ = pair
    model = make_model(background_probes=True, probe_ttl=10)
    model.refresh()
    for _ in range(5):
        model.invoke("x")
    assert len(gpu.requests_to("/api/version")) == 1  # fresh cache: no probe per call
    clock.advance(11)
    model.invoke("y")  # stale: schedules one background refresh, does not wait for it
    for f in [b.probe_future for b in model.router.backends]:
        if f is not None:
            f.result(5)
    assert len(gpu.requests_to("/api/version")) == 2


def test_unknown_model_and_malformed_replies_are_typed_errors(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, cpu = pair
    model = make_model()
    gpu.inject(Fault.MALFORMED_LINE, count=1)
    cpu.inject(Fault.MALFORMED_LINE, count=1)
    with pytest.raises(AllBackendsFailedError) as info:
        model.invoke("x")
    assert [a.error_class for a in info.value.attempts] == ["JSONDecodeError"] * 2


class _TokenCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.starts = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_callbacks_see_each_token_once_even_after_a_failover(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    mode: str,
) -> None:
    gpu, _ = pair
    model = make_model()
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=0)
    counter = _TokenCounter()
    cfg: RunnableConfig = {"callbacks": [counter]}
    if mode == "sync":
        chunks = [c.content for c in model.stream("hi", config=cfg)]
    else:
        chunks = [c.content async for c in model.astream("hi", config=cfg)]
    assert counter.starts == 1
    assert "".join(counter.tokens) == "".join(str(c) for c in chunks)
    assert "".join(counter.tokens).startswith("Hello from cpu")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_batch_falls_back_per_input(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    mode: str,
) -> None:
    gpu, _ = pair
    model = make_model(backends=_gpu_with(pair, Timeouts(connect=1, first_token=5, idle=0.3)))
    gpu.inject(Fault.HANG_MID_STREAM, count=1, after_chunks=2)
    inputs = ["one", "two", "three"]
    cfg: RunnableConfig = {"max_concurrency": 1}
    out = model.batch(inputs, cfg) if mode == "sync" else await model.abatch(inputs, cfg)
    assert [m.response_metadata["backend"] for m in out] == ["cpu", "cpu", "cpu"]
    meta = [m.response_metadata["contextharbor"] for m in out]
    # The first input met the stall and fell back whole; the GPU's circuit then stayed open.
    assert [a["category"] for a in meta[0]["attempts"]] == ["timeout"]
    assert all(m["attempts"] == [] and m["skipped"][0]["backend"] == "gpu" for m in meta[1:])
    assert all(str(m.content).endswith(f"You said: {i}") for m, i in zip(out, inputs, strict=True))


def test_structured_output_include_raw_survives_a_failover(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    gpu, _ = pair
    gpu.inject(Fault.OOM, count=1)
    out = make_model().with_structured_output(City, include_raw=True).invoke("Paris?")
    assert isinstance(out, dict)
    assert isinstance(out["parsed"], City) and out["parsing_error"] is None
    assert out["raw"].response_metadata["backend"] == "cpu"


def test_copies_and_assignments_send_their_own_parameters(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, _ = pair
    llm = make_model(temperature=0.1)
    llm.invoke("a")
    copy = llm.model_copy(update={"model": "qwen2.5:0.5b", "temperature": 0.9})
    copy.invoke("b")
    llm.temperature = 0.5
    llm.invoke("c")
    bodies = [r.body for r in gpu.requests_to("/api/chat")]
    assert [(b["model"], b["options"]["temperature"]) for b in bodies] == [
        ("llama3.2:1b", 0.1),
        ("qwen2.5:0.5b", 0.9),
        ("llama3.2:1b", 0.5),
    ]
    assert copy.router is llm.router  # breakers and probes describe the servers: shared


def test_a_failed_inner_build_releases_its_slot_and_trial(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu, _ = pair
    model = make_model(background_trials=False)  # the trial is a user's call here
    gpu.inject(Fault.REFUSE)
    model.invoke("open the GPU circuit")
    gpu.clear_faults()
    clock.advance(model.breaker.cooldown + 1)

    def broken(self: HybridChatOllama, cfg: Any) -> Any:
        raise RuntimeError("client construction failed")

    model._h.sync_inner.clear()
    monkeypatch.setattr(HybridChatOllama, "_build_inner", broken)
    with pytest.raises(RuntimeError):
        model.invoke("trial call; its client cannot be built")
    s = model.stats()["gpu"]
    assert s["in_flight"] == 0 and s["circuit"] == "half_open"
    monkeypatch.undo()
    assert model.invoke("next trial").response_metadata["backend"] == "gpu"
    assert model.stats()["gpu"]["circuit"] == "closed"


@pytest.fixture
def no_done_server() -> Iterator[str]:
    """A real HTTP server whose /api/chat streams two chunks and ends cleanly WITHOUT
    Ollama's final done:true line (the stand-in always sends it, so this one is bespoke)."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for word in ("Half", " an"):
                line = (
                    json.dumps(
                        {
                            "model": "llama3.2:1b",
                            "created_at": "2025-01-01T00:00:00Z",
                            "message": {"role": "assistant", "content": word},
                            "done": False,
                        }
                    ).encode()
                    + b"\n"
                )
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_a_stream_without_its_done_line_is_not_taken_as_complete(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    no_done_server: str,
) -> None:
    from langchain_contextharbor import BackendConfig, StreamInterruptedError

    _, cpu = pair
    model = HybridChatOllama(
        model="llama3.2:1b",
        background_probes=False,
        backends=[
            BackendConfig(name="gpu", base_url=no_done_server),
            BackendConfig(name="cpu", kind="cpu", base_url=cpu.url),
        ],
    )
    msg = model.invoke("hi")  # the cut-short answer is not returned: the CPU's whole one is
    assert msg.response_metadata["backend"] == "cpu"
    attempt = msg.response_metadata["contextharbor"]["attempts"][0]
    assert (attempt["error_class"], attempt["category"]) == ("TruncatedStreamError", "malformed")
    fresh = HybridChatOllama(
        model="llama3.2:1b",
        background_probes=False,
        backends=[
            BackendConfig(name="gpu", base_url=no_done_server),
            BackendConfig(name="cpu", kind="cpu", base_url=cpu.url),
        ],
    )
    got: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        for chunk in fresh.stream("hi"):
            got.append(str(chunk.content))
    assert "".join(got) == "Half an" and info.value.delivered_chunks == 2
    model.close()
    fresh.close()


def test_secrets_in_headers_and_probe_errors_never_leak(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from langchain_contextharbor import BackendConfig

    gpu, cpu = pair
    caplog.set_level("DEBUG", logger="langchain_contextharbor")
    model = HybridChatOllama(
        model="llama3.2:1b",
        background_probes=False,
        backends=[
            BackendConfig(
                name="gpu",
                base_url=f"http://alice:s3cretPW@127.0.0.1:{gpu.port}",
                headers={"X-Api-Key": "key-ABCDEF123"},
            ),
            BackendConfig(name="cpu", kind="cpu", base_url=cpu.url),
        ],
    )
    gpu.inject(Fault.HTTP_ERROR, status=500, paths=("/api/version",))
    probes = model.refresh()
    plan = model.select_backend()
    text = " ".join([str(probes), plan.explain(), caplog.text, repr(model)])
    assert "s3cretPW" not in text and "key-ABCDEF123" not in text
    assert model.backend_configs[0].scrub("a key-ABCDEF123 b") == "a *** b"
    with pytest.raises(ValueError, match="control character"):
        BackendConfig(name="x", base_url=cpu.url, headers={"Authorization": "Bearer t\n"})
    model.close()

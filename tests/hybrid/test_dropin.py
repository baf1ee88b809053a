"""HybridChatOllama as a drop-in for ChatOllama: where code that worked with ChatOllama
must keep working. Everything over real HTTP against stand-ins."""

from __future__ import annotations

import asyncio
import gc
import pickle
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Optional

import httpx
import ollama
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.callbacks.streaming_stdout import StreamingStdOutCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from langgraph.graph import START, MessagesState, StateGraph
from typing_extensions import TypedDict

from langchain_contextharbor import (
    ABANDONED_EVENT,
    AllBackendsUnreachableError,
    BackendConfig,
    ConfigurationError,
    DeadlineExceededError,
    EmptyResponseError,
    HybridChatOllama,
    ModelNotAvailableError,
    NoBackendAvailableError,
    Timeouts,
)
from langchain_contextharbor.errors import ModelValidationError
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.engines import DoneEvent, EngineEvent, TextToken
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
# Roomy: no test here provokes a timeout with these (a loaded CI machine must not either).
FAST = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.errors = 0
        self.starts = 0

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_error(self, *args: Any, **kwargs: Any) -> None:
        self.errors += 1


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _meta(msg: Any) -> dict[str, Any]:
    return dict(msg.response_metadata.get("contextharbor") or {})


# ------------------------------------------------------------ invoke under observers
def test_plain_invoke_fires_each_token_once(
    make_model: Callable[..., HybridChatOllama], capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model(timeouts=FAST)
    h = Tokens()
    msg = model.invoke("hi", config={"callbacks": [h]})
    assert len(h.tokens) > 3 and "".join(h.tokens) == msg.content
    msg = model.invoke("hi", config={"callbacks": [StreamingStdOutCallbackHandler()]})
    assert capsys.readouterr().out == msg.content  # printed exactly once


def test_invoke_under_a_streaming_observer_falls_back_and_flags_abandoned_tokens(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, _ = pair
    model = make_model(timeouts=FAST)
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=3)

    async def node(x: str) -> AIMessage:
        return await model.ainvoke(x)

    async def run() -> list[dict[str, Any]]:
        return [e async for e in RunnableLambda(node).astream_events("hi", version="v2")]

    events = asyncio.run(run())
    final = [e for e in events if e["event"] == "on_chain_end"][-1]["data"]["output"]
    assert "cpu" in final.content and "gpu" not in final.content  # one backend's answer
    assert final.response_metadata["backend"] == "cpu"
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == [ABANDONED_EVENT]
    assert custom[0]["data"]["backend"] == "gpu" and custom[0]["data"]["chunks"] >= 1
    streamed = [e["data"]["chunk"] for e in events if e["event"] == "on_chat_model_stream"]
    firsts = [c for c in streamed if _meta(c).get("backend") == "cpu"]
    assert firsts and firsts[0].response_metadata["contextharbor"]["abandoned"][0]["backend"] == (
        "gpu"
    )
    # the tokens observers kept after the event are exactly the returned answer
    cut = next(i for i, c in enumerate(streamed) if _meta(c).get("backend") == "cpu")
    assert "".join(str(c.content) for c in streamed[cut:]) == final.content


def test_langgraph_messages_mode_invoke_falls_back(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, _ = pair
    model = make_model(timeouts=FAST)

    def call(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState).add_node("llm", call).add_edge(START, "llm").compile()
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=3)
    chunks, values = [], []
    for mode, item in graph.stream(
        {"messages": [HumanMessage("hi")]}, stream_mode=["messages", "values"]
    ):
        (chunks if mode == "messages" else values).append(item)
    answer = values[-1]["messages"][-1]
    assert answer.response_metadata["backend"] == "cpu" and "gpu" not in answer.content
    metas = [_meta(c) for c, _ in chunks]
    assert any(m.get("backend") == "gpu" for m in metas)  # observers saw gpu tokens ...
    restart = [m for m in metas if m.get("backend") == "cpu"]
    assert restart and restart[0]["abandoned"][0]["backend"] == "gpu"  # ... and are told


# ------------------------------------------------------------ constructor arguments
def test_base_url_host_port_and_ollama_host(
    pair: tuple[OllamaStandIn, OllamaStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu, cpu = pair
    for url in (gpu.url, f"127.0.0.1:{gpu.port}"):
        m = HybridChatOllama(model=MODEL, base_url=url, background_probes=False)
        assert [c.name for c in m.backend_configs] == ["default"]
        assert m.invoke("hi").response_metadata["backend"] == "default"
        m.close()
    with pytest.raises(ConfigurationError, match="base_url cannot be combined"):
        HybridChatOllama(model=MODEL, base_url=gpu.url, cpu_url=cpu.url)
    monkeypatch.delenv("OLLAMA_GPU_URL", raising=False)
    monkeypatch.setenv("OLLAMA_CPU_URL", "")
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{gpu.port}")
    m = HybridChatOllama(model=MODEL, background_probes=False)
    assert m.backend_configs[0].base_url == gpu.url
    m.close()


def test_client_kwargs_apply_to_every_backend(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, _ = pair
    seen: list[str | None] = []

    def hook(request: httpx.Request) -> None:
        seen.append(request.headers.get("X-Trace"))

    model = make_model(
        timeouts=FAST, client_kwargs={"headers": {"X-Trace": "t1"}, "event_hooks": {}}
    )
    assert all(c.request_headers["X-Trace"] == "t1" for c in model.backend_configs)
    model2 = make_model(timeouts=FAST, client_kwargs={"event_hooks": {"request": [hook]}})
    gpu.inject(Fault.REFUSE)
    model2.invoke("hi")  # gpu refused, cpu answers: the hook ran on both backends' clients
    assert len(seen) >= 2
    with pytest.raises(ConfigurationError, match="timeout"):
        make_model(client_kwargs={"timeout": 5})


def _headers_seen(srv: OllamaStandIn) -> list[dict[str, str]]:
    """The headers of every request ``srv`` receives from now on, as it read them off the
    wire (the stand-in's request log keeps no headers: its dispatch is wrapped)."""
    seen: list[dict[str, str]] = []
    dispatch = srv._dispatch

    def recording(handler: Any) -> None:
        seen.append({":path": handler.path, **{k.lower(): v for k, v in handler.headers.items()}})
        dispatch(handler)

    srv._dispatch = recording  # type: ignore[method-assign]
    return seen


def test_sync_and_async_client_kwargs_reach_the_wire(
    ollama_standin_factory: StandInFactory,
) -> None:
    """ChatOllama merges sync_client_kwargs / async_client_kwargs over client_kwargs for
    its sync / async client: the headers of each side are sent by that side only."""
    srv = ollama_standin_factory(name="one", models=[MODEL])
    seen = _headers_seen(srv)
    model = HybridChatOllama(
        model=MODEL,
        base_url=srv.url,
        timeouts=FAST,
        client_kwargs={"headers": {"X-Shared": "s", "X-Side": "shared"}},
        sync_client_kwargs={"headers": {"X-Side": "sync", "X-Sync": "1"}},
        async_client_kwargs={"headers": {"X-Side": "async"}},
    )
    model.invoke("hi")
    chat = [h for h in seen if h[":path"] == "/api/chat"]
    assert chat and chat[-1]["x-side"] == "sync" and chat[-1]["x-sync"] == "1"
    assert chat[-1]["x-shared"] == "s"
    seen.clear()
    asyncio.run(model.ainvoke("hi"))
    chat = [h for h in seen if h[":path"] == "/api/chat"]
    assert chat and chat[-1]["x-side"] == "async" and "x-sync" not in chat[-1]
    assert chat[-1]["x-shared"] == "s"
    assert "async" not in repr(model) and "async" not in str(vars(model)["async_client_kwargs"])
    with pytest.raises(ConfigurationError, match="transport"):
        HybridChatOllama(model=MODEL, base_url=srv.url, sync_client_kwargs={"transport": 1})
    model.close()


def test_validate_model_on_init_and_logprobs(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, cpu = pair
    make_model(validate_model_on_init=True)  # present: fine
    with pytest.raises(ModelNotAvailableError, match="ollama pull"):
        make_model(model="not-pulled:1b", validate_model_on_init=True)
    with pytest.raises(ollama.ResponseError) as info:  # what ChatOllama users catch
        make_model(model="not-pulled:1b").invoke("hi")
    assert info.value.status_code == 404 and isinstance(info.value, ModelNotAvailableError)
    model = make_model(logprobs=True, top_logprobs=2)
    model.invoke("hi")
    body = (gpu.requests_to("/api/chat") or cpu.requests_to("/api/chat"))[-1].body
    assert body["logprobs"] is True and body["top_logprobs"] == 2


def test_validate_model_on_init_raises_value_errors(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    """ChatOllama's validate_model raises ValueError for a model not pulled and for a
    server that is down: `except ValueError` catches ours too, still the typed errors."""
    with pytest.raises(ValueError, match="ollama pull") as info:
        make_model(model="not-pulled:1b", validate_model_on_init=True)
    assert isinstance(info.value, ModelNotAvailableError)
    assert isinstance(info.value, ModelValidationError)
    assert info.value.status_code == 404 and info.value.attempts == []
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ValueError) as down:
        HybridChatOllama(model=MODEL, base_url=dead, validate_model_on_init=True)
    assert isinstance(down.value, (AllBackendsUnreachableError, NoBackendAvailableError))
    assert isinstance(down.value, ModelValidationError)
    assert isinstance(down.value, httpx.ConnectError)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is type(info.value) and str(again) == str(info.value)


def test_top_logprobs_as_in_chatollama(make_model: Callable[..., HybridChatOllama]) -> None:
    with pytest.warns(UserWarning, match="Setting `logprobs=True` automatically"):
        model = make_model(top_logprobs=5)
    assert model.logprobs is True
    with pytest.raises(ValueError, match="`logprobs` is explicitly `False`"):
        make_model(top_logprobs=5, logprobs=False)
    with pytest.raises(ValueError, match="top_logprobs"):
        make_model(top_logprobs=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_model(logprobs=True, top_logprobs=3).logprobs is True


def test_typeddict_json_schema_sends_required(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    class Joke(TypedDict):
        """A joke."""

        setup: Annotated[Optional[str], None, "the setup"]  # noqa: UP045 (TypedDict eval)
        punchline: Annotated[Optional[str], None, "the punchline"]  # noqa: UP045

    gpu, _ = pair
    model = make_model(timeouts=FAST)
    model.with_structured_output(Joke, method="json_schema").invoke("Tell me a joke")
    fmt = gpu.requests_to("/api/chat")[-1].body["format"]
    # what ChatOllama sends: without "required", constrained decoding may drop fields
    assert fmt["required"] == ["setup", "punchline"]


# ------------------------------------------------------------ answers and errors
class _Answer:
    def __init__(self, events: list[EngineEvent]) -> None:
        self.events = events

    def chat(self, turn: Any) -> Iterator[EngineEvent]:
        yield from self.events


def test_empty_answer_is_the_models_no_failover(
    ollama_standin_factory: StandInFactory,
) -> None:
    empty = _Answer([DoneEvent("load")])
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], engine=empty)
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], engine=empty)
    model = HybridChatOllama(model=MODEL, gpu_url=gpu.url, cpu_url=cpu.url, timeout=2.0)
    with pytest.raises(ValueError, match=r"^No data received from Ollama stream\.$") as info:
        model.invoke("hi")
    assert isinstance(info.value, EmptyResponseError)
    assert len(gpu.requests_to("/api/chat")) == 1 and not cpu.requests_to("/api/chat")
    assert model.stats()["gpu"]["circuit"] == "closed"  # not held against the server
    gpu.engine = _Answer([TextToken("  \n"), DoneEvent("stop")])
    assert model.invoke("hi").content == "  \n"  # whitespace is returned as it is
    model.close()


def test_all_refused_is_also_a_connect_error_for_retry_filters(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, cpu = pair
    model = make_model(timeouts=FAST)
    gpu.inject(Fault.REFUSE)
    cpu.inject(Fault.REFUSE)
    h = Tokens()
    retried = model.with_retry(
        retry_if_exception_type=(httpx.ConnectError,),
        stop_after_attempt=2,
        wait_exponential_jitter=False,
    )
    with pytest.raises(httpx.ConnectError) as info:
        retried.invoke("hi", config={"callbacks": [h]})
    assert h.starts == 2  # the filter matched: retried once
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value, (AllBackendsUnreachableError, NoBackendAvailableError))
    model.refresh()  # now known down: nothing is tried, still a ConnectError
    with pytest.raises(NoBackendAvailableError) as info2:
        model.invoke("hi")
    assert isinstance(info2.value, httpx.ConnectError)


def test_failing_optional_probes_leave_backend_usable(
    ollama_standin_factory: StandInFactory,
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL])
    gpu.inject(Fault.HTTP_ERROR, paths=("/api/ps", "/api/show", "/api/tags"), status=404)
    model = HybridChatOllama(
        model=MODEL, backends=[BackendConfig(name="gpu", base_url=gpu.url, timeouts=FAST)]
    )
    model.refresh(MODEL)
    ok = [model.invoke("hi").response_metadata["backend"] for _ in range(20)]
    assert ok == ["gpu"] * 20
    gpu.inject(Fault.HTTP_ERROR, paths=("/api/version", "/"), status=500)
    model.refresh()
    with pytest.raises(NoBackendAvailableError):
        model.invoke("hi")  # the health answer alone decides "down"
    model.close()


# ------------------------------------------------------------ total deadline
def test_total_deadline_bounds_invoke_and_stream(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, cpu = pair
    # first-token and idle deadlines far beyond anything a slow machine takes (and the bound
    # below), so only the 0.4 s total deadline can end these calls
    t = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0, total=0.4)
    model = make_model(timeouts=t)
    gpu.inject(Fault.HANG_MID_STREAM, after_chunks=2)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        model.invoke("hi")
    with pytest.raises(DeadlineExceededError) as info:
        for _ in model.stream("hi"):
            pass
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 20.0  # the idle timeout (30 s) never ran out
    assert not cpu.requests_to("/api/chat")  # the deadline ends the call: no failover
    assert model.stats()["gpu"]["circuit"] == "closed"  # not the server's fault
    gpu.clear_faults()
    # a server that trickles tokens under the idle timeout is cut at the deadline too
    gpu.engine = _Slow()
    with pytest.raises(DeadlineExceededError):
        model.invoke("hi")
    assert make_model(timeouts=FAST).invoke("hi").content  # off by default


class _Slow:
    def chat(self, turn: Any) -> Iterator[EngineEvent]:
        for _ in range(100):
            time.sleep(0.02)  # the server's pace, not the test waiting
            yield TextToken("x ")
        yield DoneEvent("stop")


# ------------------------------------------------------------ resources
def test_close_closes_inner_clients_and_abandoned_calls_are_counted(
    make_model: Callable[..., HybridChatOllama],
) -> None:
    model = make_model(timeouts=FAST)
    model.invoke("hi")
    client = model.backend_model("gpu")._client._client  # type: ignore[attr-defined]
    for _ in model.stream("hi"):
        break  # the caller stops reading
    s = model.stats()["gpu"]
    failures = sum(s["failures"].values())
    assert s["abandoned"] == 1 and s["requests"] == s["successes"] + failures + s["abandoned"]
    model.close()
    assert client.is_closed
    assert model.invoke("hi").content  # still usable


def test_async_clients_closed_with_their_loops_and_built_off_loop(
    make_model: Callable[..., HybridChatOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(timeouts=FAST)
    built_on: list[int] = []
    original = HybridChatOllama._build_inner

    def spy(self: HybridChatOllama, cfg: BackendConfig) -> Any:
        built_on.append(threading.get_ident())
        return original(self, cfg)

    monkeypatch.setattr(HybridChatOllama, "_build_inner", spy)
    # A build that must load a TLS context (35-95 ms) goes off the loop; with the shared
    # context ready it costs ~0.1 ms and runs inline (test_shared_tls.py). Force the former.
    monkeypatch.setattr("langchain_contextharbor._pool.ssl_context_ready", lambda *a, **k: False)

    async def once() -> tuple[str, int]:
        msg = await model.ainvoke("hi")
        return str(msg.content), threading.get_ident()

    # Collect what earlier tests left behind first: only this test's own clients count.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop_threads = [asyncio.run(once())[1] for _ in range(30)]
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks[:3]]
    assert built_on and not set(built_on) & set(loop_threads)  # never on the loop's thread


async def test_cancelled_call_is_counted_as_abandoned(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, _ = pair
    model = make_model(timeouts=FAST)
    gpu.inject(Fault.SLOW_FIRST_TOKEN, delay=1.0, count=1)
    task = asyncio.ensure_future(model.ainvoke("hi"))
    while not gpu.in_flight:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = model.stats()["gpu"]
    assert s["abandoned"] == 1 and s["in_flight"] == 0


def test_checked_show_set_is_bounded(make_model: Callable[..., HybridChatOllama]) -> None:
    model = make_model(background_probes=True)
    model.refresh()
    for i in range(1500):
        model.select_backend(f"m{i}:1b")
    assert len(model.router._prober.shows_checked) <= 1024

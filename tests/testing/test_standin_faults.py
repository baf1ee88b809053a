"""Every injected fault surfaces in ChatOllama as the exception real Ollama failures give.

These are the exceptions the router's failure classification is written against (see the
reference's fault table), so each is checked through real ``ChatOllama`` over real HTTP, both
sync and async. Hangs are detected with a short client timeout, never by sleeping.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import httpx
import ollama
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_ollama import ChatOllama

from langchain_contextharbor.testing import BUSY_MESSAGE, Fault, OllamaStandIn
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
# A read timeout short enough to end a hang quickly: used only where a hang is how the test
# provokes the timeout. Every call that must succeed (or meet another fault) gets ROOMY, which a
# loaded CI machine cannot run out of; a hang (capped at 60 s) is far beyond both.
SHORT = 0.3
ROOMY = 10.0


@pytest.fixture
def srv(ollama_standin_factory: StandInFactory) -> OllamaStandIn:
    return ollama_standin_factory(name="gpu", models=[MODEL], loaded=[MODEL])


def chat_model(srv: OllamaStandIn, timeout: float = ROOMY) -> ChatOllama:
    return ChatOllama(model=MODEL, base_url=srv.url, client_kwargs={"timeout": timeout})


async def stream(model: ChatOllama, mode: str, got: list[AIMessageChunk]) -> None:
    """Consume a stream into ``got`` (so chunks before an exception stay visible)."""
    if mode == "sync":
        for chunk in model.stream("hello there"):
            got.append(chunk)
    else:
        async for chunk in model.astream("hello there"):
            got.append(chunk)


async def invoke(model: ChatOllama, mode: str) -> Any:
    if mode == "sync":
        return model.invoke("hello there")
    return await model.ainvoke("hello there")


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


@MODES
async def test_refuse_and_stopped(srv: OllamaStandIn, mode: str) -> None:
    model = chat_model(srv)
    srv.inject(Fault.REFUSE)
    with pytest.raises(httpx.ConnectError):
        await invoke(model, mode)
    srv.clear_faults()  # reopens the same port
    assert "from gpu" in (await invoke(model, mode)).content
    srv.stop()
    with pytest.raises(httpx.ConnectError):
        await invoke(model, mode)
    srv.start()
    assert "from gpu" in (await invoke(model, mode)).content


@MODES
@pytest.mark.parametrize(
    "fault", [Fault.ACCEPT_HANG, Fault.HANG_BEFORE_FIRST_CHUNK, Fault.HANG_AFTER_HEADERS]
)
async def test_hang_before_any_chunk_times_out(srv: OllamaStandIn, mode: str, fault: Fault) -> None:
    srv.inject(fault, count=1)
    got: list[AIMessageChunk] = []
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await stream(chat_model(srv, SHORT), mode, got)
    assert got == [] and time.monotonic() - t0 < 20  # the read timeout, not the 60 s hang cap
    assert srv.requests_to("/api/chat")[-1].fault is fault
    assert "from gpu" in (await invoke(chat_model(srv), mode)).content  # count=1 is spent


@MODES
async def test_hang_mid_stream(srv: OllamaStandIn, mode: str) -> None:
    srv.inject(Fault.HANG_MID_STREAM, count=1, after_chunks=2)
    got: list[AIMessageChunk] = []
    with pytest.raises(httpx.ReadTimeout):  # 1 s: the two chunks before the hang must arrive
        await stream(chat_model(srv, 1.0), mode, got)
    assert [c.content for c in got] == ["Hello", " from"]


@MODES
async def test_cut_mid_stream(srv: OllamaStandIn, mode: str) -> None:
    srv.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=3)
    got: list[AIMessageChunk] = []
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        await stream(chat_model(srv), mode, got)
    assert len(got) == 3
    with pytest.raises(httpx.RemoteProtocolError):  # also before the first chunk
        srv.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=0)
        await invoke(chat_model(srv), mode)


@MODES
async def test_error_line_mid_stream(srv: OllamaStandIn, mode: str) -> None:
    srv.inject(Fault.ERROR_MID_STREAM, count=1, after_chunks=2, message="boom")
    got: list[AIMessageChunk] = []
    with pytest.raises(ollama.ResponseError) as info:
        await stream(chat_model(srv), mode, got)
    assert (info.value.status_code, info.value.error) == (-1, "boom")
    assert len(got) == 2


@MODES
async def test_malformed_line(srv: OllamaStandIn, mode: str) -> None:
    srv.inject(Fault.MALFORMED_LINE, count=1, after_chunks=1)
    got: list[AIMessageChunk] = []
    with pytest.raises(json.JSONDecodeError):
        await stream(chat_model(srv), mode, got)
    assert len(got) == 1


@MODES
@pytest.mark.parametrize(
    ("fault", "status", "text"),
    [
        (
            Fault.OOM,
            500,
            r"model requires more system memory \(\d+\.\d [GM]iB\) "
            r"than is available \(\d+\.\d [GM]iB\)",
        ),
        (Fault.BUSY, 503, BUSY_MESSAGE.replace(".", r"\.")),
        (Fault.MODEL_NOT_FOUND, 404, f"model '{MODEL}' not found"),
        (Fault.HTTP_ERROR, 500, "llama runner process has terminated: CUDA error: out of memory"),
    ],
)
async def test_error_responses(
    srv: OllamaStandIn, mode: str, fault: Fault, status: int, text: str
) -> None:
    srv.inject(fault, count=1)
    with pytest.raises(ollama.ResponseError) as info:
        await invoke(chat_model(srv), mode)
    assert info.value.status_code == status
    assert re.fullmatch(text, info.value.error)
    rec = srv.requests_to("/api/chat")[-1]
    assert (rec.status, rec.fault) == (status, fault)


async def test_http_error_custom_and_oom_available(ollama_standin_factory: StandInFactory) -> None:
    srv = ollama_standin_factory(name="g", available_memory=3 * 1024**3)
    srv.inject(
        Fault.HTTP_ERROR, count=1, status=400, message="the input length exceeds the context length"
    )
    with pytest.raises(ollama.ResponseError) as info:
        chat_model(srv).invoke("x")
    assert info.value.status_code == 400
    srv.inject(Fault.OOM, count=1)
    with pytest.raises(ollama.ResponseError, match=r"than is available \(3\.0 GiB\)"):
        chat_model(srv).invoke("x")


@MODES
async def test_slow_first_token(srv: OllamaStandIn, mode: str) -> None:
    srv.inject(Fault.SLOW_FIRST_TOKEN, count=1, delay=0.2)
    t0 = time.monotonic()
    got: list[AIMessageChunk] = []
    await stream(chat_model(srv), mode, got)
    assert time.monotonic() - t0 >= 0.2
    assert "".join(str(c.content) for c in got).startswith("Hello from gpu")
    # ... and beyond a short read timeout it is a timeout
    srv.inject(Fault.SLOW_FIRST_TOKEN, count=1, delay=1.0)
    with pytest.raises(httpx.ReadTimeout):
        await stream(chat_model(srv, SHORT), mode, [])


def test_non_streaming_requests_meet_faults(srv: OllamaStandIn) -> None:
    model = chat_model(srv)
    srv.inject(Fault.CUT_MID_STREAM, count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        model.invoke("x", stream=False)
    srv.inject(Fault.ERROR_MID_STREAM, count=1)
    with pytest.raises(ollama.ResponseError) as info:
        model.invoke("x", stream=False)
    assert info.value.status_code == 500
    srv.inject(Fault.MALFORMED_LINE, count=1)
    with pytest.raises(json.JSONDecodeError):
        model.invoke("x", stream=False)
    srv.inject(Fault.HANG_BEFORE_FIRST_CHUNK, count=1)
    with pytest.raises(httpx.ReadTimeout):
        chat_model(srv, SHORT).invoke("x", stream=False)


def test_probes_keep_answering_while_chat_hangs(srv: OllamaStandIn) -> None:
    srv.inject(Fault.HANG_BEFORE_FIRST_CHUNK)
    with pytest.raises(httpx.ReadTimeout):
        chat_model(srv, SHORT).invoke("x")
    client = ollama.Client(host=srv.url, timeout=ROOMY)
    assert httpx.get(srv.url, timeout=ROOMY).text == "Ollama is running"
    assert [m.model for m in client.ps().models] == [MODEL]
    assert client.show(MODEL).modelinfo
    # a fault without count stays until cleared
    with pytest.raises(httpx.ReadTimeout):
        chat_model(srv, SHORT).invoke("x")
    srv.clear_faults()
    assert "from gpu" in str(chat_model(srv).invoke("x").content)


def test_paths_widen_and_narrow(srv: OllamaStandIn) -> None:
    srv.inject(Fault.BUSY, count=1, paths=None)
    assert httpx.get(srv.url + "/api/tags").status_code == 503
    srv.inject(Fault.HANG_BEFORE_FIRST_CHUNK, count=1, paths=["/api/ps"])
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(srv.url + "/api/ps", timeout=SHORT)
    assert "from gpu" in str(chat_model(srv).invoke("x").content)  # chat untouched
    srv.inject(Fault.ACCEPT_HANG, count=1)  # default: every path
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(srv.url + "/", timeout=SHORT)
    assert srv.faults == []


def test_counted_faults_run_out(srv: OllamaStandIn) -> None:
    srv.inject(Fault.BUSY, count=2)
    for _ in range(2):
        with pytest.raises(ollama.ResponseError):
            chat_model(srv).invoke("x")
    assert "from gpu" in str(chat_model(srv).invoke("x").content)
    with pytest.raises(ValueError):
        srv.inject(Fault.REFUSE, count=1)


def test_clear_faults_resumes_a_hung_stream(srv: OllamaStandIn) -> None:
    srv.inject(Fault.HANG_MID_STREAM, after_chunks=2)
    got: list[str] = []
    done = threading.Event()

    def consume() -> None:
        for chunk in chat_model(srv, timeout=10).stream("hello there"):
            got.append(str(chunk.content))
        done.set()

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30  # a safety net: the loop ends as soon as it sees it
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == ["Hello", " from"] and not done.is_set()
    srv.clear_faults()
    assert done.wait(30)
    assert "".join(got) == "Hello from gpu (llama3.2:1b). You said: hello there"


def test_stop_never_hangs_on_hung_handlers(srv: OllamaStandIn) -> None:
    srv.inject(Fault.HANG_BEFORE_FIRST_CHUNK)
    srv.inject(Fault.ACCEPT_HANG, paths=["/api/tags"])
    errors: list[BaseException] = []

    def call(fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=call, args=(lambda: chat_model(srv, timeout=30).invoke("x"),)),
        threading.Thread(target=call, args=(lambda: httpx.get(srv.url + "/api/tags", timeout=30),)),
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 30  # a safety net: the loop ends as soon as it sees it
    while len(srv.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    # stop() waits up to 30 s for handler threads; released hung handlers end at once, while
    # handlers left hanging (60 s cap) would keep it waiting the whole 30 s.
    srv.stop(timeout=30)
    assert time.monotonic() - t0 < 20
    for w in workers:
        w.join(30)
    assert len(errors) == 2
    assert all(isinstance(e, httpx.TransportError) for e in errors), errors
    srv.clear_faults()
    srv.start()
    assert httpx.get(srv.url + "/api/tags").status_code == 200


def test_hang_cap_bounds_every_hang(ollama_standin_factory: StandInFactory) -> None:
    srv = ollama_standin_factory(name="capped", hang_cap=0.2)
    srv.inject(Fault.HANG_BEFORE_FIRST_CHUNK, count=1)
    t0 = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):  # dropped when the cap expires
        chat_model(srv).invoke("x")  # (a hang past the cap would end in a 10 s ReadTimeout)
    assert time.monotonic() - t0 < 9


def test_finite_hang_resumes(srv: OllamaStandIn) -> None:
    srv.inject(Fault.HANG_MID_STREAM, count=1, after_chunks=1, delay=0.2)
    t0 = time.monotonic()
    out = chat_model(srv).invoke("x")
    assert time.monotonic() - t0 >= 0.2 and "from gpu" in str(out.content)


def test_clear_faults_releases_accept_hang(srv: OllamaStandIn) -> None:
    srv.inject(Fault.ACCEPT_HANG)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(httpx.get(srv.url + "/api/version", timeout=10).status_code)
    )
    worker.start()
    deadline = time.monotonic() + 30  # a safety net: the loop ends as soon as it sees it
    while not srv.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.requests[-1].status is None  # accepted, unanswered
    srv.clear_faults()
    worker.join(30)
    assert result == [200]

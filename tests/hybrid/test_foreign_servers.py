"""Issue 18, items 1, 2 and 5, over real HTTP: servers that are not Ollama, a GPU that hangs
from the start, and the first plan's sizing.

The not-Ollama servers are Python's own ``http.server`` (what ``python -m http.server``
answers), a server answering JSON of another shape, and a listener that accepts and never
answers (:mod:`langchain_contextharbor.testing.foreign`); the healthy CPU is the stand-in.
The hung-start cases run in bounded real time (the probe timeout, about a second), with
nothing slept: each waits only for the router's own verdict."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_contextharbor import BackendConfig, HybridChatOllama, Timeouts
from langchain_contextharbor.health import check_backends, preview_route
from langchain_contextharbor.sizing import GIB
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.fake_nvml import FakeNVML
from langchain_contextharbor.testing.foreign import json_server, plain_http_server, silent_listener
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
T = Timeouts(connect=2.0, first_token=30.0, idle=10.0, probe=5.0)

Make = Callable[..., HybridChatOllama]


@pytest.fixture
def cpu(ollama_standin_factory: StandInFactory) -> OllamaStandIn:
    return ollama_standin_factory(name="cpu", models=[MODEL], gpu_fraction=0.0)


@pytest.fixture
def make(cpu: OllamaStandIn) -> Iterator[Make]:
    """A fresh HybridChatOllama with ``gpu_url`` as its GPU and the stand-in as its CPU."""
    made: list[HybridChatOllama] = []

    def _make(gpu_url: str, *, timeouts: Timeouts = T, **kw: Any) -> HybridChatOllama:
        params: dict[str, Any] = {
            "model": MODEL,
            "backends": [
                BackendConfig(name="gpu", base_url=gpu_url, kind="gpu", timeouts=timeouts),
                BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=T),
            ],
            "nvml": FakeNVML.from_fixture(fail_init=True),
            "host_memory": lambda: 512 * GIB,
        }
        params.update(kw)
        m = HybridChatOllama(**params)
        made.append(m)
        return m

    yield _make
    for m in made:
        m.close()


def _meta(msg: Any) -> dict[str, Any]:
    return dict(msg.response_metadata["contextharbor"])


# ---------------------------------------------------------------- 1. know what a server is
def test_check_says_a_plain_web_server_is_not_ollama(cpu: OllamaStandIn) -> None:
    with plain_http_server() as url:
        gpu, c = check_backends(gpu_url=url, cpu_url=cpu.url, timeout=5.0)
    assert not gpu.healthy
    assert gpu.error == "HTTP 404, text/html: not an Ollama server"
    assert c.healthy


def test_check_says_json_of_another_shape_is_not_ollama(cpu: OllamaStandIn) -> None:
    with json_server({"status": "ok"}) as url:
        gpu, _ = check_backends(gpu_url=url, cpu_url=cpu.url, timeout=5.0)
    assert not gpu.healthy
    assert gpu.error == (
        'HTTP 200, application/json without a "version" string: not an Ollama server'
    )


def test_route_and_the_router_skip_a_plain_web_server(make: Make, cpu: OllamaStandIn) -> None:
    with plain_http_server() as url:
        plan = preview_route(MODEL, gpu_url=url, cpu_url=cpu.url, timeout=5.0)
        assert plan.backends == ["cpu"], plan.explain()
        assert "not an Ollama server" in plan.skipped[0].reason
        llm = make(url)
        msg = llm.invoke("hi")
    meta = _meta(msg)
    assert meta["backend"] == "cpu"
    assert meta["skipped"][0]["backend"] == "gpu"
    assert "HTTP 404, text/html: not an Ollama server" in meta["skipped"][0]["reason"]


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke"])
def test_a_501_html_page_from_chat_fails_over_and_names_the_backend(make: Make, mode: str) -> None:
    # Probes off: the router does not know what the GPU URL is and tries it first. Its
    # answer (http.server's 501 HTML page for a POST) is a backend fault, not the request's.
    with plain_http_server() as url:
        llm = make(url, background_probes=False)
        if mode == "invoke":
            msg = llm.invoke("hi")
        elif mode == "stream":
            msg = next(iter(llm.stream("hi")))
        else:
            msg = asyncio.run(llm.ainvoke("hi"))
        meta = _meta(msg)
        assert meta["backend"] == "cpu"
        att = meta["attempts"][0]
        assert att["backend"] == "gpu"
        assert att["category"] == "malformed"
        assert (
            "gpu answered POST /api/chat with HTTP 501, text/html: not an Ollama server"
            in (att["message"])
        )
        assert "<html" not in att["message"].lower()
        # The next call fails over the same way (501 HTML is not "fatal").
        assert _meta(llm.invoke("again"))["backend"] == "cpu"


def test_json_of_another_shape_from_chat_fails_over(make: Make) -> None:
    with json_server({"ok": True}) as url:
        llm = make(url, background_probes=False)
        meta = _meta(llm.invoke("hi"))
    assert meta["backend"] == "cpu"
    assert meta["attempts"][0]["backend"] == "gpu"
    assert meta["attempts"][0]["category"] == "malformed"


def test_an_error_body_of_another_shape_fails_over(make: Make) -> None:
    with json_server({"detail": "not implemented"}, status=501) as url:
        llm = make(url, background_probes=False)
        meta = _meta(llm.invoke("hi"))
    assert meta["backend"] == "cpu"
    assert (
        'HTTP 501, application/json without Ollama\'s {"error": ...} body'
        in (meta["attempts"][0]["message"])
    )


def test_ollamas_own_501_stays_the_requests_error(make: Make) -> None:
    # Ollama's JSON error body: the model cannot do what was asked, on any server.
    from ollama import ResponseError

    with json_server({"error": '"all-minilm" does not support chat'}, status=501) as url:
        llm = make(url, background_probes=False)
        with pytest.raises(ResponseError) as info:
            llm.invoke("hi")
    assert info.value.status_code == 501


def test_embeddings_fail_over_from_a_plain_web_server(cpu: OllamaStandIn) -> None:
    from langchain_contextharbor import HybridOllamaEmbeddings

    cpu.add_model("all-minilm")
    with plain_http_server() as url:
        emb = HybridOllamaEmbeddings(
            model="all-minilm",
            backends=[
                BackendConfig(name="gpu", base_url=url, kind="gpu", timeouts=T),
                BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=T),
            ],
            background_probes=False,
        )
        try:
            vec = emb.embed_query("hello")
        finally:
            emb.close()
    assert vec and all(isinstance(x, float) for x in vec)


# ---------------------------------------------------------------- 2. evidence ends a wait
PROBE = 1.0
HUNG = Timeouts(connect=2.0, first_token=60.0, idle=10.0, probe=PROBE)


def test_a_fresh_instance_facing_a_hung_gpu_answers_from_the_cpu_within_the_probe_timeout(
    make: Make,
) -> None:
    with silent_listener() as url:
        llm = make(url, timeouts=HUNG)
        t0 = time.perf_counter()
        msg = llm.invoke("hi")
        took = time.perf_counter() - t0
    meta = _meta(msg)
    assert meta["backend"] == "cpu"
    assert took < PROBE + 1.0, took  # not the 60 s first-token deadline
    att = meta["attempts"][0] if meta["attempts"] else None
    if att is not None:  # tried, then ended by the probe's verdict
        assert att["backend"] == "gpu"
        assert "probe" in att["message"] and "deadline" in att["message"]
    else:  # or skipped: the probe's verdict came before the plan
        assert meta["skipped"][0]["backend"] == "gpu"


def test_the_async_twin_ends_the_doomed_wait_too(make: Make) -> None:
    with silent_listener() as url:
        llm = make(url, timeouts=HUNG)
        t0 = time.perf_counter()
        msg = asyncio.run(llm.ainvoke("hi"))
        took = time.perf_counter() - t0
    assert _meta(msg)["backend"] == "cpu"
    assert took < PROBE + 1.0, took


def test_a_probe_that_says_up_gives_the_cold_deadline(
    make: Make, ollama_standin_factory: StandInFactory
) -> None:
    # The GPU's /api/version is slow (0.3 s: past the 0.05 s first-probe wait, so the plan
    # tries the GPU with no evidence yet), then its chat takes longer than the watch (probe
    # timeout 0.5 s + 0.5 s margin): the probe said "up", so the cold deadline holds.
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], gpu_fraction=1.0)
    gpu.inject(Fault.SLOW_FIRST_TOKEN, delay=0.3, paths=("/api/version",), count=1)
    gpu.inject(Fault.SLOW_FIRST_TOKEN, delay=1.0, paths=("/api/chat",), count=1)
    short = Timeouts(connect=2.0, first_token=30.0, idle=10.0, probe=0.5)
    llm = make(gpu.url, timeouts=short, first_probe_wait=0.05)
    msg = llm.invoke("hi")
    meta = _meta(msg)
    assert meta["backend"] == "gpu", meta
    assert meta["attempts"] == []


def test_timeouts_name_the_deadline_and_its_value(
    make: Make, ollama_standin_factory: StandInFactory
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], gpu_fraction=1.0)
    llm = make(gpu.url, timeouts=Timeouts(connect=2.0, first_token=0.3, idle=0.3, probe=5.0))
    llm.refresh()
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK, count=1)
    meta = _meta(llm.invoke("hi", options={"num_ctx": 4096}))
    assert meta["backend"] == "cpu"
    assert (
        "first-token deadline 0.3s (Timeouts.first_token) ran out"
        in (meta["attempts"][0]["message"])
    )
    gpu.clear_faults()
    # The idle deadline, on a fresh instance (the first failure made the GPU look slow).
    llm = make(gpu.url, timeouts=Timeouts(connect=2.0, first_token=5.0, idle=0.3, probe=5.0))
    llm.refresh()
    gpu.inject(Fault.HANG_MID_STREAM, after_chunks=1, count=1)
    meta = _meta(llm.invoke("again"))
    assert meta["backend"] == "cpu", meta
    assert "idle deadline 0.3s (Timeouts.idle) ran out" in meta["attempts"][0]["message"]
    gpu.clear_faults()


# ---------------------------------------------------------------- 5. the first plan's sizing
def test_the_first_plan_sizes_like_the_later_ones(
    make: Make, ollama_standin_factory: StandInFactory, cpu: OllamaStandIn
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], gpu_fraction=1.0)
    backends = [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=T, max_memory_gb=8),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=T),
    ]
    llm = make(gpu.url, backends=backends, first_probe_wait=10.0)
    first = llm.select_backend(num_ctx=65536)  # the fresh instance's first plan
    assert first.primary == "gpu", first.explain()
    assert first.request.needed_bytes < 4 * GIB, first.request.footprint_detail  # not ~9 GiB
    routed = preview_route(MODEL, backends, num_ctx=65536, timeout=5.0)
    assert routed.request == first.request  # every figure: weights, KV cache, total
    llm.refresh(MODEL)
    assert llm.select_backend(num_ctx=65536).request == first.request
    assert _meta(llm.invoke("hi", options={"num_ctx": 65536}))["backend"] == "gpu"


def test_the_first_async_call_sizes_like_the_later_ones(
    make: Make, ollama_standin_factory: StandInFactory, cpu: OllamaStandIn
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], gpu_fraction=1.0)
    backends = [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=T, max_memory_gb=8),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=T),
    ]
    llm = make(gpu.url, backends=backends, first_probe_wait=10.0)
    msg = asyncio.run(llm.ainvoke("hi", options={"num_ctx": 65536}))  # the first call
    assert _meta(msg)["backend"] == "gpu", _meta(msg)["reason"]


def test_probe_replies_are_bounded_in_bytes(cpu: OllamaStandIn) -> None:
    # A "version" answer padded past the 64 KiB bound: read no further, report it.
    with json_server({"version": "0.14.3", "pad": "x" * (70 * 1024)}) as url:
        gpu, _ = check_backends(gpu_url=url, cpu_url=cpu.url, timeout=5.0)
    assert not gpu.healthy
    assert gpu.error is not None and "/api/version reply over 65536 bytes" in gpu.error


def test_a_redirect_in_front_of_ollama_is_followed(cpu: OllamaStandIn) -> None:
    # A proxy that redirects (an HTML 307 page) is not "not Ollama": the client follows it.
    import http.server

    from langchain_contextharbor.testing.foreign import _serve

    class Redirect(http.server.BaseHTTPRequestHandler):
        def _go(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            body = b"<html>moved</html>"
            self.send_response(307)
            self.send_header("Location", cpu.url + self.path)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _go

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with _serve(Redirect) as url:
        llm = HybridChatOllama(
            model=MODEL,
            backends=[BackendConfig(name="gpu", base_url=url, kind="gpu", timeouts=T)],
            background_probes=False,
        )
        try:
            msg = llm.invoke("hi")
        finally:
            llm.close()
    assert _meta(msg)["backend"] == "gpu" and msg.content

"""What a proxy shared by many apps must get right: slots released when a client leaves,
many streams at once, and no mixing of two builds of an embedding model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import ollama
from servekit import EMBED, MODEL, Proxy, backends_for

from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

HI = [{"role": "user", "content": "hi"}]


def _in_flight(proxy: Proxy) -> dict[str, int]:
    return {k: v["in_flight"] for k, v in proxy.state.router.stats().items()}


def test_a_client_that_leaves_mid_stream_frees_the_slot(
    proxy: Proxy, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    gpu, _ = pair
    gpu.inject(Fault.HANG_MID_STREAM, after_chunks=2, count=1)  # the client leaves meanwhile
    with httpx.stream("POST", f"{proxy.url}/api/chat", json={"model": MODEL, "messages": HI}) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection at once
        assert '"content":"Hello"' in next(lines)
        assert _in_flight(proxy)["gpu"] == 1
    deadline = time.monotonic() + 10
    while _in_flight(proxy)["gpu"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _in_flight(proxy) == {"gpu": 0, "cpu": 0}
    assert proxy.state.router.stats()["gpu"]["abandoned"] == 1  # as a cancelled astream is


def test_many_streams_at_once_each_answer_whole(proxy: Proxy) -> None:
    async def one(i: int) -> str:
        c = ollama.AsyncClient(host=proxy.url, timeout=60)
        text = ""
        async for part in await c.chat(
            model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], stream=True
        ):
            text += part.message.content or ""
        return text

    async def run() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(24)))

    answers = asyncio.run(run())
    for i, text in enumerate(answers):
        assert text.endswith(f"You said: q{i}"), text
        assert text.count("Hello from") == 1


def test_an_embedding_build_is_never_mixed(
    ollama_standin_factory: StandInFactory, make_proxy: Callable[..., Proxy]
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[StandInModel(EMBED, digest="a" * 64)])
    cpu = ollama_standin_factory(
        name="cpu", models=[StandInModel(EMBED, digest="b" * 64)], gpu_fraction=0.0
    )
    proxy = make_proxy(backends=backends_for(gpu, cpu))
    c = ollama.Client(host=proxy.url, timeout=30)
    assert len(c.embed(model=EMBED, input="x").embeddings) == 1  # pinned to gpu's build
    assert proxy.state.embedder(EMBED).digest == "a" * 64
    gpu.stop()
    r = httpx.post(f"{proxy.url}/api/embed", json={"model": EMBED, "input": "x"}, timeout=30)
    assert r.status_code == 409
    assert "bbbbbbbbbbbb" in r.json()["error"] and not cpu.requests_to("/api/embed")


def test_two_proxies_share_one_fleet_through_redis(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_proxy: Callable[..., Proxy], redis_server: Any
) -> None:
    """Fleet mode: a GPU failure one proxy worker saw opens the circuit for the other."""
    gpu, _ = pair
    a = make_proxy(shared_state=redis_server.url)
    b = make_proxy(shared_state=redis_server.url)
    gpu.inject(
        Fault.HTTP_ERROR, count=1, message="llama runner process has terminated: exit status 2"
    )
    c = ollama.Client(host=a.url, timeout=30)
    assert c.chat(model=MODEL, messages=HI).message.content.startswith("Hello from cpu")
    answer = ollama.Client(host=b.url, timeout=30).chat(model=MODEL, messages=HI)
    assert answer.message.content.startswith("Hello from cpu")
    d = b.state.decisions[-1]
    assert d["backend"] == "cpu" and d["attempts"] == []
    assert any(s["backend"] == "gpu" for s in d["skipped"]), d
    assert len(gpu.requests_to("/api/chat")) == 1  # only proxy a's attempt reached it

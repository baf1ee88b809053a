"""Ollama's API through the proxy, driven by ollama-python, ChatOllama and OllamaEmbeddings."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
import ollama
import pytest
from langchain_ollama import ChatOllama, OllamaEmbeddings
from pydantic import BaseModel
from servekit import CPU_ONLY, EMBED, MODEL, Proxy

from langchain_contextharbor.testing import Fault, OllamaStandIn

Pair = tuple[OllamaStandIn, OllamaStandIn]
HI = [{"role": "user", "content": "hi"}]


def client(proxy: Proxy, **kw: object) -> ollama.Client:
    return ollama.Client(host=proxy.url, timeout=30, **kw)  # type: ignore[arg-type]


def test_chat_and_stream_come_from_the_gpu_with_ollamas_framing(proxy: Proxy, pair: Pair) -> None:
    c = client(proxy)
    answer = c.chat(model=MODEL, messages=HI)
    assert answer.message.content == f"Hello from gpu ({MODEL}). You said: hi"
    assert answer.done and answer.done_reason == "stop" and answer.eval_count
    parts = list(c.chat(model=MODEL, messages=HI, stream=True))
    assert "".join(p.message.content or "" for p in parts) == answer.message.content
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    # The wire itself: NDJSON, one object per line, as the backend wrote it.
    with httpx.stream("POST", f"{proxy.url}/api/chat", json={"model": MODEL, "messages": HI}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert lines[-1]["done"] is True and "eval_count" in lines[-1]
    assert all(set(x) >= {"model", "created_at", "message", "done"} for x in lines)
    d = proxy.state.decisions[-1]
    assert d["endpoint"] == "/api/chat" and d["backend"] == "gpu" and d["model"] == MODEL
    assert d["reasons"] and d["attempts"] == []


def test_generate_streams_and_not(proxy: Proxy) -> None:
    c = client(proxy)
    whole = c.generate(model=MODEL, prompt="hi")
    assert "Hello from gpu" in whole.response
    parts = list(c.generate(model=MODEL, prompt="hi", stream=True))
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].done


def test_a_model_only_the_cpu_has_goes_there(proxy: Proxy) -> None:
    answer = client(proxy).chat(model=CPU_ONLY, messages=HI)
    assert answer.message.content.startswith("Hello from cpu")


def test_missing_model_is_ollamas_404(proxy: Proxy) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client(proxy).chat(model="nope:1b", messages=HI)
    assert err.value.status_code == 404
    assert err.value.error == "model 'nope:1b' not found"
    with pytest.raises(ollama.ResponseError) as err:
        client(proxy).embed(model="nope:1b", input="x")
    assert err.value.status_code == 404
    assert err.value.error == 'model "nope:1b" not found, try pulling it first'


def test_bad_requests_get_ollamas_400(proxy: Proxy) -> None:
    r = httpx.post(f"{proxy.url}/api/chat", content=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
    r = httpx.post(f"{proxy.url}/api/chat", json={"messages": HI})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


def test_chatollama_invoke_stream_tools_and_structured_output(proxy: Proxy) -> None:
    llm = ChatOllama(model=MODEL, base_url=proxy.url)
    assert llm.invoke("hi").content == f"Hello from gpu ({MODEL}). You said: hi"
    assert "".join(str(c.content) for c in llm.stream("hi")).startswith("Hello from gpu")

    def get_weather(city: str) -> str:
        """Get the weather of a city."""
        return "sunny"

    msg = llm.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert [t["name"] for t in msg.tool_calls] == ["get_weather"]
    assert msg.tool_calls[0]["args"].keys() == {"city"}

    class Joke(BaseModel):
        setup: str
        punchline: str

    joke = llm.with_structured_output(Joke).invoke("Tell me a joke")
    assert isinstance(joke, Joke)


def test_embeddings_match_the_backend_and_keep_the_build(proxy: Proxy, pair: Pair) -> None:
    gpu, _ = pair
    direct = OllamaEmbeddings(model=EMBED, base_url=gpu.url).embed_documents(["a", "b"])
    via = OllamaEmbeddings(model=EMBED, base_url=proxy.url).embed_documents(["a", "b"])
    assert via == direct
    legacy = client(proxy).embeddings(model=EMBED, prompt="a")
    assert list(legacy.embedding) == pytest.approx(direct[0])
    assert proxy.state.decisions[-1]["endpoint"] == "/api/embeddings"
    assert proxy.state.embedder(EMBED).digest  # the build is pinned


def test_tags_and_ps_are_merged_and_say_where(proxy: Proxy) -> None:
    c = client(proxy)
    tags = httpx.get(f"{proxy.url}/api/tags").json()["models"]
    where = {m["name"]: m["backends"] for m in tags}
    assert where[f"{CPU_ONLY}"] == ["cpu"]
    assert where[MODEL] == ["gpu", "cpu"]
    assert len(tags) == len(where)  # one entry per model
    assert {m.model for m in c.list().models} == set(where)  # the client reads it
    c.chat(model=MODEL, messages=HI)
    c.chat(model=CPU_ONLY, messages=HI)
    ps = httpx.get(f"{proxy.url}/api/ps").json()["models"]
    assert {(m["name"], m["backend"]) for m in ps} >= {(MODEL, "gpu"), (CPU_ONLY, "cpu")}
    assert {m.model for m in c.ps().models} >= {MODEL, CPU_ONLY}


def test_version_show_and_root(proxy: Proxy) -> None:
    assert httpx.get(f"{proxy.url}/api/version").json() == {"version": "0.14.3"}
    shown = client(proxy).show(CPU_ONLY)  # only the CPU server has it: asked there
    assert "completion" in (shown.capabilities or [])
    with pytest.raises(ollama.ResponseError) as err:
        client(proxy).show("nope:1b")
    assert err.value.status_code == 404
    r = httpx.get(proxy.url + "/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    r = httpx.post(f"{proxy.url}/api/pull", json={"model": MODEL})
    assert r.status_code == 501 and "does not proxy" in r.json()["error"]


def _stop_when(srv: OllamaStandIn, cond: Callable[[], bool]) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + 20
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.stop()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_gpu_killed_before_the_first_token_the_cpu_answers_once(proxy: Proxy, pair: Pair) -> None:
    gpu, _ = pair
    client(proxy).list()  # the router has probed both
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK)
    stopper = _stop_when(gpu, lambda: bool(gpu.requests_to("/api/chat")))
    parts = list(client(proxy).chat(model=MODEL, messages=HI, stream=True))
    stopper.join()
    text = "".join(p.message.content or "" for p in parts)
    assert text == f"Hello from cpu ({MODEL}). You said: hi"  # once, and only the CPU's
    d = proxy.state.decisions[-1]
    assert d["backend"] == "cpu" and [a["backend"] for a in d["attempts"]] == ["gpu"]
    # ChatOllama sees the same: the CPU's answer, no error.
    assert (
        ChatOllama(model=MODEL, base_url=proxy.url)
        .invoke("hi")
        .content.startswith("Hello from cpu")
    )


def test_gpu_killed_after_the_first_token_ends_with_ollamas_error_line(
    proxy: Proxy, pair: Pair
) -> None:
    gpu, cpu = pair
    client(proxy).list()
    gpu.inject(Fault.HANG_MID_STREAM, after_chunks=2, count=1)
    got: list[str] = []
    with pytest.raises(ollama.ResponseError) as err:
        for part in client(proxy).chat(model=MODEL, messages=HI, stream=True):
            got.append(part.message.content or "")
            if len(got) == 2:
                gpu.stop()
    assert err.value.status_code == -1  # a mid-stream error line, as Ollama writes one
    assert "gpu" in err.value.error and "cannot continue" in err.value.error
    assert got == ["Hello", " from"]  # the GPU's two tokens, nothing of the CPU's
    assert not cpu.requests_to("/api/chat")
    assert proxy.state.decisions[-1]["status"] == 502


def test_chatollama_stream_interrupted_raises_in_its_own_terms(proxy: Proxy, pair: Pair) -> None:
    gpu, _ = pair
    client(proxy).list()
    gpu.inject(Fault.ERROR_MID_STREAM, after_chunks=2, count=1)
    llm = ChatOllama(model=MODEL, base_url=proxy.url)
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError):
        for chunk in llm.stream("hi"):
            seen.append(str(chunk.content))
    assert "".join(seen) == "Hello from"


def test_every_backend_down_is_a_503_naming_them(proxy: Proxy, pair: Pair) -> None:
    for srv in pair:
        srv.stop()
    r = httpx.post(f"{proxy.url}/api/chat", json={"model": MODEL, "messages": HI}, timeout=60)
    assert r.status_code in (502, 503)
    text = r.json()["error"]
    assert "gpu" in text and "cpu" in text
    assert httpx.get(f"{proxy.url}/api/tags", timeout=60).status_code == 503


def test_unknown_paths_and_methods_answer_as_ollama(proxy: Proxy) -> None:
    r = httpx.get(f"{proxy.url}/api/nothing")
    assert (r.status_code, r.text) == (404, "404 page not found")
    r = httpx.post(f"{proxy.url}/api/ps")
    assert (r.status_code, r.text) == (405, "405 method not allowed")

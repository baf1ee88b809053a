"""The stand-in speaks Ollama's wire protocol exactly as the reference describes it.

Every response is parsed by the real ollama-python typed models (as the router's probes will
do) and the raw bytes are checked where clients are strict (NDJSON framing, content types,
error texts), because a lenient fake would hide router bugs that real Ollama exposes.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import httpx
import ollama
import pytest

from langchain_contextharbor.testing import (
    BUSY_MESSAGE,
    OllamaStandIn,
    StandInModel,
)
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z$")
RFC3339_ANY = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?(Z|[+-]\d\d:\d\d)$")

QWEN = StandInModel("qwen3:8b", capabilities=["completion", "tools", "thinking"])
GEMMA = StandInModel("gemma:2b", capabilities=["completion"])
MINILM = StandInModel(
    "all-minilm:latest", capabilities=["embedding"], embedding_length=384, parameter_size="23M"
)


@pytest.fixture
def srv(ollama_standin_factory: StandInFactory) -> OllamaStandIn:
    return ollama_standin_factory(
        name="gpu",
        models=["llama3.2:1b", QWEN, GEMMA, MINILM],
        loaded=["llama3.2:1b"],
    )


@pytest.fixture
def client(srv: OllamaStandIn) -> ollama.Client:
    return ollama.Client(host=srv.url, timeout=5)


def _chat_lines(srv: OllamaStandIn, body: Mapping[str, Any]) -> tuple[httpx.Response, list[str]]:
    with httpx.Client(timeout=5) as c, c.stream("POST", srv.url + "/api/chat", json=body) as r:
        raw = r.read().decode()
    return r, raw.split("\n")


# ------------------------------------------------------------------ discovery endpoints
def test_root_version_and_head(srv: OllamaStandIn) -> None:
    r = httpx.get(srv.url + "/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    h = httpx.head(srv.url + "/")
    assert h.status_code == 200 and h.content == b""
    assert httpx.get(srv.url + "/api/version").json() == {"version": "0.14.3"}
    assert httpx.head(srv.url + "/api/version").status_code == 200
    assert httpx.head(srv.url + "/api/tags").status_code == 200


def test_unknown_path_and_wrong_method(srv: OllamaStandIn) -> None:
    r = httpx.get(srv.url + "/api/nope")
    assert (r.status_code, r.text) == (404, "404 page not found")
    assert r.headers["content-type"].startswith("text/plain")
    for method in ("POST", "HEAD", "DELETE"):
        r = httpx.request(method, srv.url + "/api/ps")
        assert r.status_code == 405
        if method != "HEAD":
            assert r.text == "405 method not allowed"
    assert httpx.get(srv.url + "/api/chat").status_code == 405


def test_tags_parse_and_shape(srv: OllamaStandIn, client: ollama.Client) -> None:
    listed = client.list()
    assert isinstance(listed, ollama.ListResponse)
    names = [m.model for m in listed.models]
    assert set(names) == {"llama3.2:1b", "qwen3:8b", "gemma:2b", "all-minilm:latest"}
    raw = httpx.get(srv.url + "/api/tags").json()["models"]
    stamps = [m["modified_at"] for m in raw]
    assert stamps == sorted(stamps, reverse=True) or len({*stamps}) == len(stamps)
    for m in raw:
        assert m["name"] == m["model"]
        assert RFC3339_ANY.match(m["modified_at"])
        assert re.fullmatch(r"[0-9a-f]{64}", m["digest"])
        assert m["details"]["parent_model"] == ""
        assert m["details"]["format"] == "gguf"
    empty = OllamaStandIn(models=[]).start()
    try:
        assert httpx.get(empty.url + "/api/tags").json() == {"models": []}
        assert httpx.get(empty.url + "/api/ps").json() == {"models": []}
    finally:
        empty.stop()


def test_ps_gpu_and_cpu(ollama_standin_factory: StandInFactory) -> None:
    gpu = ollama_standin_factory(name="gpu", loaded=["llama3.2:1b"])
    cpu = ollama_standin_factory(name="cpu", loaded=["llama3.2:1b"], gpu_fraction=0.0)
    g = ollama.Client(host=gpu.url, timeout=5).ps()
    c = ollama.Client(host=cpu.url, timeout=5).ps()
    assert isinstance(g, ollama.ProcessResponse)
    (gm,), (cm,) = g.models, c.models
    assert gm.size is not None and gm.size > 0 and gm.size_vram == gm.size
    assert cm.size_vram == 0 and cm.size == gm.size
    assert gm.context_length == 4096
    raw = httpx.get(cpu.url + "/api/ps").json()["models"][0]
    assert raw["size_vram"] == 0  # present even when zero (no omitempty)
    assert RFC3339_ANY.match(raw["expires_at"])


def test_show(srv: OllamaStandIn, client: ollama.Client) -> None:
    shown = client.show("qwen3:8b")
    assert isinstance(shown, ollama.ShowResponse)
    info = shown.modelinfo or {}
    arch = info["general.architecture"]
    assert arch == "qwen3"
    assert isinstance(info["general.parameter_count"], int)
    for key in (
        "context_length",
        "block_count",
        "attention.head_count",
        "attention.head_count_kv",
        "embedding_length",
    ):
        assert isinstance(info[f"{arch}.{key}"], int), key
    assert shown.capabilities == ["completion", "tools", "thinking"]
    r = httpx.post(srv.url + "/api/show", json={"model": "nope"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = httpx.post(srv.url + "/api/show", json={})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    # bare names resolve to :latest, as in Ollama
    assert httpx.post(srv.url + "/api/show", json={"model": "all-minilm"}).status_code == 200


# ------------------------------------------------------------------ /api/chat
def test_chat_stream_framing(srv: OllamaStandIn) -> None:
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi there"}]}
    r, lines = _chat_lines(srv, body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["transfer-encoding"] == "chunked"
    assert lines[-1] == ""  # every line ends in \n ...
    objs = [json.loads(line) for line in lines[:-1]]  # ... and none is blank
    assert len(objs) > 3
    for o in objs[:-1]:
        assert o["done"] is False and o["model"] == "llama3.2:1b"
        assert o["message"]["role"] == "assistant" and "content" in o["message"]
        assert RFC3339_UTC.match(o["created_at"])
        assert "eval_count" not in o
    final = objs[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count"):
        assert isinstance(final[key], int) and final[key] > 0
    text = "".join(o["message"]["content"] for o in objs)
    assert text == "Hello from gpu (llama3.2:1b). You said: hi there"
    assert final["eval_count"] == len(objs) - 1


def test_chat_non_stream_and_model_echo(srv: OllamaStandIn, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError):  # llama3.2 means llama3.2:latest, absent here
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "yo"}])
    srv.add_model("llama3.2:latest")
    resp = client.chat(model="llama3.2", messages=[{"role": "user", "content": "yo"}])
    assert isinstance(resp, ollama.ChatResponse)
    assert resp.model == "llama3.2"  # echoed verbatim, no :latest
    assert resp.done and resp.done_reason == "stop"
    assert resp.message.content == "Hello from gpu (llama3.2). You said: yo"
    r = httpx.post(
        srv.url + "/api/chat",
        json={
            "model": "llama3.2:1b",
            "stream": False,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert "transfer-encoding" not in r.headers


def test_chat_errors(srv: OllamaStandIn) -> None:
    url = srv.url + "/api/chat"
    msgs = [{"role": "user", "content": "hi"}]

    def err(body: object = None, content: bytes | None = None) -> tuple[int, str]:
        r = httpx.post(url, json=body) if content is None else httpx.post(url, content=content)
        return r.status_code, r.json()["error"]

    assert err({"model": "nope", "messages": msgs}) == (404, "model 'nope' not found")
    assert err({"messages": msgs}) == (400, "model is required")
    assert err(content=b"") == (400, "missing request body")
    assert err(content=b"xyz") == (400, "invalid character 'x' looking for beginning of value")
    assert err(content=b'{"model": "llama3.2:1b"') == (400, "unexpected EOF")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert err({"model": "gemma:2b", "messages": msgs, "tools": tools}) == (
        400,
        "registry.ollama.ai/library/gemma:2b does not support tools",
    )
    assert err({"model": "llama3.2:1b", "messages": msgs, "think": True}) == (
        400,
        '"llama3.2:1b" does not support thinking',
    )
    assert err({"model": "qwen3:8b", "messages": msgs, "think": "max"}) == (
        400,
        'invalid think value: "max" (must be "high", "medium", "low", true, or false)',
    )
    assert err({"model": "qwen3:8b", "messages": msgs, "think": "high"}) == (
        400,
        'think value "high" is not supported for this model',
    )
    assert err({"model": "llama3.2:1b", "messages": msgs, "keep_alive": "10"}) == (
        400,
        'time: missing unit in duration "10"',
    )
    assert err({"model": "llama3.2:1b", "messages": msgs, "format": "xml"}) == (
        500,
        'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object',
    )
    assert err({"model": "llama3.2:1b", "messages": msgs, "options": {"num_ctx": "big"}}) == (
        500,
        'option "num_ctx" must be of type integer',
    )
    assert err({"model": "all-minilm", "messages": msgs}) == (
        400,
        '"all-minilm" does not support chat',
    )


def test_chat_tool_calls_wire(srv: OllamaStandIn) -> None:
    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "required": ["city", "days"],
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": "integer"},
                        "unit": {"type": "string"},  # optional: left out, as a model would
                    },
                },
            },
        },
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]
    question: list[dict[str, Any]] = [
        {"role": "user", "content": "What is the weather in Tokyo for 3 days?"}
    ]
    _, lines = _chat_lines(srv, {"model": "llama3.2:1b", "messages": question, "tools": tools})
    objs = [json.loads(x) for x in lines if x]
    calls = [c for o in objs for c in o["message"].get("tool_calls", [])]
    assert len(calls) == 1
    (call,) = calls
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {"city": "Tokyo", "days": 3},
    }
    tool_chunk = next(o for o in objs if o["message"].get("tool_calls"))
    assert tool_chunk["message"]["content"] == "" and tool_chunk["done"] is False
    # the typed client accepts it (and drops id/index)
    resp = ollama.Client(host=srv.url, timeout=5).chat(
        model="llama3.2:1b", messages=question, tools=tools
    )
    assert resp.message.tool_calls and resp.message.tool_calls[0].function.name == "get_weather"
    # a tool result is answered in text
    follow: list[dict[str, Any]] = [
        *question,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    resp = ollama.Client(host=srv.url, timeout=5).chat(
        model="llama3.2:1b", messages=follow, tools=tools
    )
    assert resp.message.tool_calls is None
    assert "get_weather tool returned sunny" in (resp.message.content or "")


def test_chat_format_json_and_schema(client: ollama.Client) -> None:
    msgs = [{"role": "user", "content": "Return JSON with 'city' and 'country' keys."}]
    out = json.loads(
        client.chat(model="llama3.2:1b", messages=msgs, format="json").message.content or ""
    )
    assert set(out) == {"city", "country"}
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 18},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "kind": {"enum": ["cat", "dog"]},
            "nested": {"$ref": "#/$defs/N"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
        },
        "required": ["name", "age", "tags", "kind", "nested"],
        "$defs": {"N": {"type": "object", "properties": {"ok": {"type": "boolean"}}}},
    }
    out = json.loads(
        client.chat(
            model="llama3.2:1b", messages=[{"role": "user", "content": "a dog"}], format=schema
        ).message.content
        or ""
    )
    assert out["age"] >= 18 and len(out["tags"]) == 2 and out["kind"] == "dog"
    assert out["nested"] == {"ok": True} and isinstance(out["name"], str)
    assert isinstance(out["maybe"], (int, float))


def test_chat_thinking(client: ollama.Client) -> None:
    parts = list(
        client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    thinking = "".join(p.message.thinking or "" for p in parts)
    content = "".join(p.message.content or "" for p in parts)
    assert thinking and content.startswith("Hello from gpu")  # think defaults on
    off = client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "hi"}], think=False)
    assert off.message.thinking is None


def test_chat_options_stop_and_num_predict(client: ollama.Client) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    r = client.chat(model="llama3.2:1b", messages=msgs, options={"num_predict": 3})
    assert r.done_reason == "length" and r.eval_count == 3
    assert r.message.content == "Hello from gpu"
    r = client.chat(model="llama3.2:1b", messages=msgs, options={"stop": ["(llama"]})
    assert r.done_reason == "stop" and r.message.content == "Hello from gpu "
    parts = list(
        client.chat(model="llama3.2:1b", messages=msgs, options={"stop": ["m gp"]}, stream=True)
    )
    assert "".join(p.message.content or "" for p in parts) == "Hello fro"


def test_load_unload_and_keep_alive(srv: OllamaStandIn, client: ollama.Client) -> None:
    assert [m.model for m in client.ps().models] == ["llama3.2:1b"]
    r = httpx.post(srv.url + "/api/chat", json={"model": "qwen3:8b", "messages": []})
    assert r.json()["done_reason"] == "load" and r.json()["message"]["content"] == ""
    assert {m.model for m in client.ps().models} == {"llama3.2:1b", "qwen3:8b"}
    r = httpx.post(srv.url + "/api/chat", json={"model": "qwen3:8b", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert [m.model for m in client.ps().models] == ["llama3.2:1b"]
    client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "x"}], keep_alive=0)
    assert [m.model for m in client.ps().models] == ["llama3.2:1b"]
    client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "x"}], keep_alive=-1)
    forever = next(m for m in client.ps().models if m.model == "qwen3:8b")
    assert forever.expires_at is not None and forever.expires_at.year > 2200
    client.chat(
        model="qwen3:8b",
        messages=[{"role": "user", "content": "x"}],
        options={"num_ctx": 8192, "num_gpu": 0},
    )
    reloaded = next(m for m in client.ps().models if m.model == "qwen3:8b")
    assert reloaded.context_length == 8192 and reloaded.size_vram == 0


def test_runtime_model_changes(srv: OllamaStandIn, client: ollama.Client) -> None:
    srv.add_model(StandInModel("phi4:14b"), loaded=True)
    assert "phi4:14b" in [m.model for m in client.ps().models]
    srv.unload("phi4:14b")
    assert "phi4:14b" not in [m.model for m in client.ps().models]
    srv.set_loaded("phi4:14b", size=1000, size_vram=400, context_length=2048)
    m = next(m for m in client.ps().models if m.model == "phi4:14b")
    assert (m.size, m.size_vram, m.context_length) == (1000, 400, 2048)
    srv.remove_model("phi4:14b")
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="phi4:14b", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404


def test_load_delay_lists_model_while_loading(ollama_standin_factory: StandInFactory) -> None:
    srv = ollama_standin_factory(name="slow", load_delay=0.3)
    client = ollama.Client(host=srv.url, timeout=5)
    t0 = time.monotonic()
    r = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - t0 >= 0.3
    assert (r.load_duration or 0) >= 300_000_000
    r2 = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}])
    # no reload: less than the 0.3 s a load costs (not a stopwatch bound: a reload pays it all)
    assert (r2.load_duration or 0) < 300_000_000
    assert [m.model for m in client.ps().models] == ["llama3.2:1b"]


def test_queue_full_gives_503(ollama_standin_factory: StandInFactory) -> None:
    srv = ollama_standin_factory(name="busy", num_parallel=1, max_queue=0, token_delay=0.05)
    client = ollama.Client(host=srv.url, timeout=5)
    stream = client.chat(
        model="llama3.2:1b", messages=[{"role": "user", "content": "x"}], stream=True
    )
    next(stream)  # the first request holds the only slot
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "y"}])
    assert (info.value.status_code, info.value.error) == (503, BUSY_MESSAGE)
    assert "again.  maximum" in BUSY_MESSAGE
    list(stream)
    # The server frees the slot just after it writes the done line the client has read:
    # wait for that (bounded), rather than racing it.
    deadline = time.monotonic() + 10
    while srv.in_flight and time.monotonic() < deadline:
        time.sleep(0.005)
    assert srv.in_flight == 0


# ------------------------------------------------------------------ embed & generate
def test_embed(srv: OllamaStandIn, client: ollama.Client) -> None:
    res = client.embed(model="all-minilm", input=["hello", "world"])
    assert isinstance(res, ollama.EmbedResponse)
    assert len(res.embeddings) == 2 and len(res.embeddings[0]) == 384
    for vec in res.embeddings:
        assert math.isclose(math.fsum(v * v for v in vec), 1.0, rel_tol=1e-9)
    again = client.embed(model="all-minilm", input="hello")
    assert list(again.embeddings[0]) == list(res.embeddings[0])  # deterministic
    assert len(client.embed(model="all-minilm", input="x", dimensions=8).embeddings[0]) == 8
    r = httpx.post(srv.url + "/api/embed", json={"model": "nope", "input": "x"})
    assert (r.status_code, r.json()["error"]) == (
        404,
        'model "nope" not found, try pulling it first',
    )
    r = httpx.post(srv.url + "/api/embed", json={"model": "all-minilm", "input": [1]})
    assert (r.status_code, r.json()["error"]) == (400, "invalid input type")
    assert (
        httpx.post(srv.url + "/api/embed", json={"model": "all-minilm", "input": []}).json()[
            "embeddings"
        ]
        == []
    )
    legacy = client.embeddings(model="all-minilm", prompt="hello")
    assert len(legacy.embedding) == 384


def test_generate(client: ollama.Client) -> None:
    r = client.generate(model="llama3.2:1b", prompt="hey")
    assert isinstance(r, ollama.GenerateResponse)
    assert r.response == "Hello from gpu (llama3.2:1b). You said: hey" and r.done
    parts = list(client.generate(model="llama3.2:1b", prompt="hey", stream=True))
    assert len(parts) > 3 and parts[-1].done_reason == "stop"


# ------------------------------------------------------------------ lifecycle
def test_stop_refuses_and_restart_same_port(srv: OllamaStandIn) -> None:
    port = srv.port
    assert httpx.get(srv.url).status_code == 200
    srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url)
    with pytest.raises(ConnectionError):  # non-streaming ollama-python converts it
        ollama.Client(host=srv.url, timeout=2).list()
    srv.start()
    assert srv.port == port and httpx.get(srv.url).status_code == 200
    srv.restart()
    assert srv.port == port and httpx.get(srv.url + "/api/version").status_code == 200


def test_keepalive_connection_dies_on_stop(srv: OllamaStandIn) -> None:
    with httpx.Client(timeout=2) as c:
        assert c.get(srv.url).status_code == 200  # pooled keep-alive connection
        srv.stop()
        with pytest.raises(httpx.TransportError):
            c.get(srv.url)
    srv.start()


def test_fixed_port_and_side_by_side(ollama_standin_factory: StandInFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    a = ollama_standin_factory(name="a", port=free)
    b = ollama_standin_factory(name="b")
    assert a.port == free and b.port != free
    ca, cb = ollama.Client(host=a.url, timeout=5), ollama.Client(host=b.url, timeout=5)
    msg = [{"role": "user", "content": "x"}]
    assert "from a " in (ca.chat(model="llama3.2:1b", messages=msg).message.content or "")
    assert "from b " in (cb.chat(model="llama3.2:1b", messages=msg).message.content or "")


def test_request_log(srv: OllamaStandIn, client: ollama.Client) -> None:
    srv.clear_log()
    before = time.time()
    client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}])
    httpx.get(srv.url + "/api/tags")
    log = srv.requests
    assert [(r.method, r.path, r.status) for r in log] == [
        ("POST", "/api/chat", 200),
        ("GET", "/api/tags", 200),
    ]
    assert log[0].body["messages"] == [{"role": "user", "content": "x"}]
    assert log[0].model == "llama3.2:1b" and log[0].instance == "gpu"
    assert log[0].fault is None and log[0].timestamp >= before
    assert srv.requests_to("/api/tags") == [log[1]]
    srv.clear_log()
    assert srv.requests == []


def test_cli_subprocess() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "langchain_contextharbor.testing",
            "--port",
            "0",
            "--name",
            "cpu",
            "--model",
            "llama3.2:1b",
            "--model",
            "qwen3:8b?capabilities=completion,tools,thinking&size=5000000000",
            "--loaded",
            "qwen3:8b",
            "--gpu-fraction",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"http://\S+", line)
        assert url, line
        client = ollama.Client(host=url.group(0), timeout=5)
        (loaded,) = client.ps().models
        assert loaded.model == "qwen3:8b" and loaded.size_vram == 0
        assert client.show("qwen3:8b").capabilities == ["completion", "tools", "thinking"]
        reply = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}])
        assert "from cpu" in (reply.message.content or "")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0

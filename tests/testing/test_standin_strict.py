"""The stand-in refuses what Ollama refuses, and offers what a user runs first.

Each case is one place where the stand-in was kinder than Ollama 0.14.3 (found by
ollama-python, ollama-js and LiteLLM against it, issue 19), checked through the real
ollama-python client and raw httpx over real HTTP, with Ollama's status codes and texts as
its source has them (server/routes.go, server/create.go, server/images.go at v0.14.3).
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import struct
from typing import Any

import httpx
import ollama
import pytest

from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel, smollm2_gguf_path
from langchain_contextharbor.testing.engines import normalize
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

CODER = StandInModel("qwen2.5-coder:0.5b", capabilities=["completion", "tools", "insert"])
NOMIC = StandInModel("nomic-embed-text")
TINY_CTX = StandInModel("all-minilm", context_length=8)


@pytest.fixture
def srv(ollama_standin_factory: StandInFactory) -> OllamaStandIn:
    return ollama_standin_factory(name="gpu", models=["llama3.2:1b", CODER, NOMIC, TINY_CTX])


@pytest.fixture
def client(srv: OllamaStandIn) -> ollama.Client:
    return ollama.Client(host=srv.url, timeout=10)


def _post(srv: OllamaStandIn, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=10)


def _lines(srv: OllamaStandIn, path: str, body: dict[str, Any]) -> tuple[int, list[Any]]:
    with httpx.Client(timeout=10) as c, c.stream("POST", srv.url + path, json=body) as r:
        raw = r.read().decode()
    assert raw.endswith("\n") and "\n\n" not in raw
    return r.status_code, [json.loads(line) for line in raw.splitlines()]


def _error(excinfo: pytest.ExceptionInfo[ollama.ResponseError]) -> tuple[int, str]:
    return excinfo.value.status_code, excinfo.value.error


USER = [{"role": "user", "content": "hello there"}]


# ---------------------------------------------------------------------------- 400s
@pytest.mark.parametrize("top", [-1, 21, 100])
def test_top_logprobs_outside_0_to_20_is_refused(client: ollama.Client, top: int) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("llama3.2:1b", USER, logprobs=True, top_logprobs=top)
    assert _error(info) == (400, "top_logprobs must be between 0 and 20")
    with pytest.raises(ollama.ResponseError) as info:
        client.generate("llama3.2:1b", "hi", logprobs=True, top_logprobs=top)
    assert _error(info) == (400, "top_logprobs must be between 0 and 20")


def test_top_logprobs_is_checked_before_the_model(srv: OllamaStandIn) -> None:
    r = _post(srv, "/api/chat", {"model": "nosuch", "messages": USER, "top_logprobs": 21})
    assert (r.status_code, r.json()) == (400, {"error": "top_logprobs must be between 0 and 20"})


@pytest.mark.parametrize(
    "extra", [{"system": "be brief"}, {"template": "{{ .Prompt }}"}, {"context": [1, 2, 3]}]
)
def test_raw_refuses_system_template_and_context(
    client: ollama.Client, extra: dict[str, Any]
) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.generate("llama3.2:1b", "hi", raw=True, **extra)
    assert _error(info) == (400, "raw mode does not support template, system, or context")


def test_suffix_needs_the_insert_capability(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.generate("llama3.2:1b", "def add(a, b):", suffix="    return c")
    assert _error(info) == (
        400,
        "registry.ollama.ai/library/llama3.2:1b does not support insert",
    )
    ok = client.generate("qwen2.5-coder:0.5b", "def add(a, b):", suffix="    return c")
    assert ok.done and ok.response


def test_embed_truncate_false_past_the_context_is_refused(client: ollama.Client) -> None:
    long_text = " ".join(f"word{i}" for i in range(20))  # 20 tokens, context_length 8
    with pytest.raises(ollama.ResponseError) as info:
        client.embed("all-minilm", long_text, truncate=False)
    assert _error(info) == (400, "the input length exceeds the context length")
    cut = client.embed("all-minilm", long_text)  # truncate defaults to true: cut, embedded
    assert len(cut.embeddings) == 1 and cut.prompt_eval_count == 8
    same = client.embed("all-minilm", " ".join(long_text.split()[:8]))
    assert cut.embeddings == same.embeddings
    fits = client.embed("all-minilm", "short text", truncate=False)
    assert len(fits.embeddings) == 1


# ---------------------------------------------------------------------------- response rules
def test_logprobs_come_back_in_ollamas_shape(client: ollama.Client, srv: OllamaStandIn) -> None:
    res = client.chat("llama3.2:1b", USER, logprobs=True, top_logprobs=3)
    assert res.logprobs, "logprobs:true must return logprobs"
    assert "".join(lp.token for lp in res.logprobs) == res.message.content
    for lp in res.logprobs:
        assert lp.logprob <= 0.0
        tops = lp.top_logprobs
        assert tops is not None and len(tops) == 3
        assert tops[0].token == lp.token
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert sum(math.exp(t.logprob) for t in tops) <= 1.0 + 1e-9
    # streamed: every chunk with text carries its own
    chunks = list(client.chat("llama3.2:1b", USER, logprobs=True, stream=True))
    texts = [c for c in chunks if c.message.content]
    assert texts and all(c.logprobs and c.logprobs[0].token == c.message.content for c in texts)
    assert all(lp.top_logprobs is None for c in texts for lp in c.logprobs or [])  # 0: none
    gen = client.generate("llama3.2:1b", "hi", logprobs=True)
    assert gen.logprobs and "".join(lp.token for lp in gen.logprobs) == gen.response
    # the raw JSON: token, logprob, bytes (UTF-8 values), as api.Logprob marshals
    raw = _post(
        srv,
        "/api/chat",
        {"model": "llama3.2:1b", "messages": USER, "stream": False, "logprobs": True},
    )
    first = raw.json()["logprobs"][0]
    assert set(first) == {"token", "logprob", "bytes"}
    assert first["bytes"] == list(first["token"].encode())
    # not asked for: not sent
    assert client.chat("llama3.2:1b", USER).logprobs is None
    assert (
        "logprobs"
        not in _post(
            srv, "/api/chat", {"model": "llama3.2:1b", "messages": USER, "stream": False}
        ).json()
    )


def test_raw_generate_returns_no_context(client: ollama.Client, srv: OllamaStandIn) -> None:
    assert client.generate("llama3.2:1b", "hi").context
    raw = client.generate("llama3.2:1b", "hi", raw=True)
    assert raw.done and raw.context is None
    _status, lines = _lines(
        srv, "/api/generate", {"model": "llama3.2:1b", "prompt": "hi", "raw": True}
    )
    assert lines[-1]["done"] is True and "context" not in lines[-1]


def test_embed_of_an_empty_string_is_no_embedding(
    client: ollama.Client, srv: OllamaStandIn
) -> None:
    res = client.embed("nomic-embed-text", "")
    assert list(res.embeddings) == []
    r = _post(srv, "/api/embed", {"model": "nomic-embed-text", "input": ""})
    assert (r.status_code, r.json()) == (200, {"model": "nomic-embed-text", "embeddings": []})
    assert _post(srv, "/api/embed", {"model": "nomic-embed-text"}).json()["embeddings"] == []
    assert len(client.embed("nomic-embed-text", ["a text"]).embeddings) == 1


# ---------------------------------------------------------------------------- host checks
@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:11434", "ollama.com", "8.8.8.8", "[2001:4860::1]:80"]
)
def test_a_foreign_host_header_gets_403(srv: OllamaStandIn, host: str) -> None:
    r = httpx.get(srv.url + "/api/tags", headers={"Host": host}, timeout=10)
    assert (r.status_code, r.content) == (403, b"")
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=srv.url, timeout=10, headers={"Host": host}).list()
    assert info.value.status_code == 403


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "LOCALHOST:80",
        "app.localhost",
        "box.local",
        "db.internal",
        "10.0.0.5",
        "192.168.1.2",
        "0.0.0.0",
        "[::1]:11434",
    ],
)
def test_local_hosts_are_let_through(srv: OllamaStandIn, host: str) -> None:
    r = httpx.get(srv.url + "/api/version", headers={"Host": host}, timeout=10)
    assert r.status_code == 200


def test_the_clients_own_urls_work(srv: OllamaStandIn) -> None:
    for url in (srv.url, f"http://localhost:{srv.port}"):
        assert ollama.Client(host=url, timeout=10).list().models


def test_a_foreign_origin_gets_403_unless_allowed(ollama_standin_factory: StandInFactory) -> None:
    srv = ollama_standin_factory(origins=["https://app.example.com", "http://*.trusted.dev"])

    def get(origin: str) -> int:
        headers = {"Origin": origin}
        return httpx.get(srv.url + "/api/version", headers=headers, timeout=10).status_code

    assert get("https://evil.example") == 403
    assert get("http://localhost:3000") == 200
    assert get("http://127.0.0.1") == 200
    assert get("chrome-extension://abcdef") == 200
    assert get("https://app.example.com") == 200
    assert get("http://ui.trusted.dev") == 200
    assert get(srv.url) == 200  # its own origin is no cross-origin request


# ---------------------------------------------------------------------------- model management
def test_pull_streams_ollamas_progress_then_lists_the_model(
    client: ollama.Client, srv: OllamaStandIn
) -> None:
    status, lines = _lines(srv, "/api/pull", {"model": "qwen3:0.6b"})
    assert status == 200
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [line for line in lines if line["status"].startswith("pulling ") and len(line) > 1]
    assert layers
    for line in layers:
        assert line["digest"].startswith("sha256:")
        assert line["status"] == f"pulling {line['digest'][7:19]}"
        assert line["total"] > 0 and line.get("completed", 0) <= line["total"]
    assert "qwen3:0.6b" in [m.model for m in client.list().models]
    show = client.show("qwen3:0.6b")
    assert show.capabilities == ["completion", "tools", "thinking"]


def test_ollama_pull_of_the_python_client(client: ollama.Client) -> None:
    assert "llama3.2:3b" not in [m.model for m in client.list().models]
    res = client.pull("llama3.2:3b")  # stream=False: the final status only
    assert res.status == "success"
    assert "llama3.2:3b" in [m.model for m in client.list().models]
    parts = list(client.pull("nomic-embed-text:v1.5", stream=True))
    assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
    assert any(p.total and p.completed == p.total for p in parts)
    assert client.embed("nomic-embed-text:v1.5", "pulled").embeddings
    again = list(client.pull("llama3.2:1b", stream=True))  # already here: cache hits
    assert again[-1].status == "success"


def test_pull_of_an_unknown_model(client: ollama.Client, srv: OllamaStandIn) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("nosuch-model")
    assert _error(info) == (500, "pull model manifest: file does not exist")
    # streamed, the error comes after "pulling manifest" was written: a line, status 200
    status, lines = _lines(srv, "/api/pull", {"model": "nosuch-model"})
    assert status == 200
    assert lines == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    with pytest.raises(ollama.ResponseError) as info:
        list(client.pull("llama3.2:99b", stream=True))
    assert info.value.status_code == -1
    assert "nosuch-model:latest" not in [m.model for m in client.list().models]
    r = _post(srv, "/api/pull", {"model": ""})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})


def test_pull_from_a_given_catalogue(ollama_standin_factory: StandInFactory) -> None:
    srv = ollama_standin_factory(models=[], catalogue=[StandInModel("house-model:7b")])
    client = ollama.Client(host=srv.url, timeout=10)
    assert client.pull("house-model:7b").status == "success"
    with pytest.raises(ollama.ResponseError):
        client.pull("llama3.2")  # not in this catalogue
    assert [m.model for m in client.list().models] == ["house-model:7b"]


def test_create_from_a_model(client: ollama.Client, srv: OllamaStandIn) -> None:
    res = client.create("pirate", from_="llama3.2:1b", system="Talk like a pirate.")
    assert res.status == "success"
    assert "pirate:latest" in [m.model for m in client.list().models]
    assert client.chat("pirate", USER).message.content
    parts = list(
        client.create("mybot:v2", from_="llama3.2:1b", template="{{ .Prompt }}", stream=True)
    )
    statuses = [p.status or "" for p in parts]
    assert statuses[-2:] == ["writing manifest", "success"]
    assert any(s.startswith("using existing layer sha256:") for s in statuses)
    assert any(s.startswith("creating new layer sha256:") for s in statuses)
    assert client.show("mybot:v2").template == "{{ .Prompt }}"
    # from a model not here yet: pulled first (its progress lines come first)
    parts = list(client.create("thinker", from_="qwen3:0.6b", stream=True))
    assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
    assert {"qwen3:0.6b", "thinker:latest"} <= {m.model for m in client.list().models}


def test_create_errors(client: ollama.Client, srv: OllamaStandIn) -> None:
    r = _post(srv, "/api/create", {"model": "x"})
    assert (r.status_code, r.json()) == (400, {"error": "neither 'from' or 'files' was specified"})
    r = _post(srv, "/api/create", {"model": "", "from": "llama3.2:1b"})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
    with pytest.raises(ollama.ResponseError) as info:
        client.create("x", from_="nosuch-base")
    assert _error(info) == (500, "pull model manifest: file does not exist")


def test_copy(client: ollama.Client, srv: OllamaStandIn) -> None:
    assert client.copy("llama3.2:1b", "backup:1").status == "success"
    names = [m.model for m in client.list().models]
    assert "backup:1" in names and "llama3.2:1b" in names
    assert client.show("backup:1").details == client.show("llama3.2:1b").details
    with pytest.raises(ollama.ResponseError) as info:
        client.copy("nosuch", "other")
    assert _error(info) == (404, 'model "nosuch" not found')
    r = _post(srv, "/api/copy", {"source": "", "destination": "x"})
    assert (r.status_code, r.json()) == (400, {"error": 'source "" is invalid'})
    r = _post(srv, "/api/copy", {"source": "llama3.2:1b", "destination": ""})
    assert (r.status_code, r.json()) == (400, {"error": 'destination "" is invalid'})


def test_delete(client: ollama.Client, srv: OllamaStandIn) -> None:
    assert client.delete("llama3.2:1b").status == "success"
    assert "llama3.2:1b" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("llama3.2:1b")
    assert _error(info) == (404, "model 'llama3.2:1b' not found")
    r = httpx.request("DELETE", srv.url + "/api/delete", json={"model": ""}, timeout=10)
    assert (r.status_code, r.json()) == (400, {"error": 'name "" is invalid'})
    # pull it back: the first thing a user runs, and the last
    assert client.pull("llama3.2:1b").status == "success"
    assert client.chat("llama3.2:1b", USER).message.content


# ---------------------------------------------------------------------------- error framing
def test_an_error_before_the_first_chunk_is_framed_as_the_advertised_version(
    ollama_standin_factory: StandInFactory,
) -> None:
    body = {"model": "llama3.2:1b", "messages": USER}
    new = ollama_standin_factory()  # advertises 0.14.3
    assert httpx.get(new.url + "/api/version", timeout=10).json() == {"version": "0.14.3"}
    new.inject(Fault.ERROR_MID_STREAM, count=1, after_chunks=0, message="boom")
    r = httpx.post(new.url + "/api/chat", json=body, timeout=10)
    assert (r.status_code, r.json()) == (500, {"error": "boom"})
    assert r.headers["content-type"] == "application/json"
    new.inject(Fault.ERROR_MID_STREAM, count=1, after_chunks=0, message="boom")
    with pytest.raises(ollama.ResponseError) as info:
        list(ollama.Client(host=new.url, timeout=10).chat("llama3.2:1b", USER, stream=True))
    assert _error(info) == (500, "boom")

    old = ollama_standin_factory(version="0.12.5")
    assert httpx.get(old.url + "/api/version", timeout=10).json() == {"version": "0.12.5"}
    old.inject(Fault.ERROR_MID_STREAM, count=1, after_chunks=0, message="boom")
    status, lines = _lines(old, "/api/chat", body)
    assert (status, lines) == (200, [{"error": "boom"}])
    old.inject(Fault.ERROR_MID_STREAM, count=1, after_chunks=0, message="boom")
    with pytest.raises(ollama.ResponseError) as info:
        list(ollama.Client(host=old.url, timeout=10).chat("llama3.2:1b", USER, stream=True))
    assert _error(info) == (-1, "boom")

    # after a chunk, both versions: status 200 and an error line
    for srv in (new, old):
        srv.inject(Fault.ERROR_MID_STREAM, count=1, after_chunks=2, message="late")
        status, lines = _lines(srv, "/api/chat", body)
        assert status == 200 and len(lines) == 3 and lines[-1] == {"error": "late"}


def test_a_runner_error_before_the_first_chunk_follows_the_version(
    ollama_standin_factory: StandInFactory,
) -> None:
    class Broken:
        def chat(self, turn: Any) -> Any:
            raise RuntimeError("GGML_ASSERT failed")
            yield  # pragma: no cover

    text = "an error was encountered while running the model: GGML_ASSERT failed"
    body = {"model": "llama3.2:1b", "messages": USER}
    new = ollama_standin_factory(engine=Broken())
    r = httpx.post(new.url + "/api/chat", json=body, timeout=10)
    assert (r.status_code, r.json()) == (500, {"error": text})
    old = ollama_standin_factory(engine=Broken(), version="0.12.5")
    assert _lines(old, "/api/chat", body) == (200, [{"error": text}])


# ---------------------------------------------------------------------------- dimensions
def test_dimensions_truncates_and_normalises_a_meaningful_vector(client: ollama.Client) -> None:
    texts = [
        "the cat sat on the mat",
        "a cat sat on a rug",
        "quantum chromodynamics lecture",
        "hi",
        "Paris is the capital of France",
    ]
    full = client.embed("nomic-embed-text", texts).embeddings
    for dims in (1, 8, 64, 256):
        cut = client.embed("nomic-embed-text", texts, dimensions=dims).embeddings
        for vec, whole in zip(cut, full, strict=True):
            assert len(vec) == dims
            assert math.isclose(math.fsum(v * v for v in vec), 1.0, rel_tol=1e-6)
            assert vec == pytest.approx(normalize(whole[:dims]))  # what Ollama computes
    cut = client.embed("nomic-embed-text", texts, dimensions=64).embeddings

    def cos(a: Any, b: Any) -> float:
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    assert cos(cut[0], cut[1]) > cos(cut[0], cut[2]) + 0.2  # still says what is similar
    big = client.embed("nomic-embed-text", texts[0], dimensions=10_000).embeddings[0]
    assert len(big) == 768 and big == pytest.approx(full[0])  # beyond the length: unchanged


# ---------------------------------------------------------------------------- create from GGUF
def _gguf(metadata: dict[str, Any], tensors: list[tuple[str, list[int]]]) -> bytes:
    """A minimal GGUF v3 file: the header Ollama reads, and no tensor data."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, value in metadata.items():
        out.append(string(key))
        if isinstance(value, str):
            out.append(struct.pack("<I", 8) + string(value))
        elif isinstance(value, list):  # an array of strings (a vocabulary)
            out.append(struct.pack("<IIQ", 9, 8, len(value)) + b"".join(map(string, value)))
        else:
            out.append(struct.pack("<II", 4, value))
    for name, dims in tensors:
        out.append(string(name) + struct.pack("<I", len(dims)))
        out.append(struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", 0, 0))
    return b"".join(out)


def test_create_from_a_gguf_file(
    client: ollama.Client, srv: OllamaStandIn, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(
        _gguf(
            {
                "general.architecture": "llama",
                "general.file_type": 15,
                "llama.context_length": 2048,
                "llama.embedding_length": 64,
                "llama.block_count": 2,
                "llama.attention.head_count": 4,
                "llama.attention.head_count_kv": 2,
                "tokenizer.ggml.tokens": ["<s>", "</s>", "hi"],
            },
            [("token_embd.weight", [64, 1000]), ("output.weight", [64, 1000])],
        )
    )
    digest = client.create_blob(path)  # POST /api/blobs/<digest>: 201
    assert httpx.head(f"{srv.url}/api/blobs/{digest}", timeout=10).status_code == 200
    parts = list(client.create("tiny", files={"tiny.gguf": digest}, stream=True))
    assert parts[0].status == "parsing GGUF"
    assert parts[-1].status == "success"
    show = client.show("tiny")
    assert show.details is not None
    assert (show.details.family, show.details.quantization_level) == ("llama", "Q4_K_M")
    assert show.details.parameter_size == "128K"
    assert show.modelinfo is not None and show.modelinfo["llama.context_length"] == 2048
    assert show.capabilities == ["completion"]
    assert client.chat("tiny", USER).message.content
    # what Ollama refuses
    missing = "sha256:" + "0" * 64
    assert httpx.head(f"{srv.url}/api/blobs/{missing}", timeout=10).status_code == 404
    r = httpx.post(f"{srv.url}/api/blobs/{missing}", content=b"not it", timeout=10)
    got = "sha256:" + hashlib.sha256(b"not it").hexdigest()
    assert (r.status_code, r.json()["error"]) == (
        400,
        f'digest mismatch, expected "{missing}", got "{got}"',
    )
    r = httpx.post(f"{srv.url}/api/blobs/nonsense", content=b"x", timeout=10)
    assert (r.status_code, r.json()) == (400, {"error": "invalid digest format"})
    text = tmp_path / "notes.gguf"
    text.write_bytes(b"just some text")
    not_gguf = client.create_blob(text)
    with pytest.raises(ollama.ResponseError) as info:
        client.create("bad", files={"notes.gguf": not_gguf})
    assert _error(info) == (400, "supplied file was not in GGUF format")
    with pytest.raises(ollama.ResponseError) as info:
        client.create("bad", files={"/abs/tiny.gguf": digest})
    assert _error(info) == (400, "file path must be relative")


@pytest.mark.skipif(smollm2_gguf_path() is None, reason="the SmolLM2 GGUF is not on this machine")
def test_create_from_the_real_smollm2_gguf(client: ollama.Client) -> None:
    path = smollm2_gguf_path()
    assert path is not None
    digest = client.create_blob(path)
    assert client.create("smol", files={path.name: digest}).status == "success"
    show = client.show("smol")
    assert show.details is not None and show.details.family == "llama"
    assert show.modelinfo is not None and show.modelinfo["llama.embedding_length"] == 576
    assert (show.details.parameter_size or "").endswith("M")


# ---------------------------------------------------------------------------- the version switch
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather of a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}},
        },
    },
}


def test_the_advertised_version_decides_what_changed_between_versions(
    ollama_standin_factory: StandInFactory,
) -> None:
    """Tool-call ``id`` (0.12.10), an always-sent ``index`` (0.12.6) and ``logprobs``
    (0.12.11, before which the fields were ignored like any unknown one) follow
    ``/api/version``, as the error framing does."""
    body = {
        "model": "llama3.2:1b",
        "stream": False,
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": "weather in Tokyo?"}],
    }
    new = ollama_standin_factory()
    call = _post(new, "/api/chat", body).json()["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["function"]["index"] == 0
    old = ollama_standin_factory(version="0.12.5")
    call = _post(old, "/api/chat", body).json()["message"]["tool_calls"][0]
    assert list(call) == ["function"] and list(call["function"]) == ["name", "arguments"]
    mid = ollama_standin_factory(version="0.12.9")
    call = _post(mid, "/api/chat", body).json()["message"]["tool_calls"][0]
    assert list(call) == ["function"] and call["function"]["index"] == 0
    # logprobs: not known to 0.12.10, so neither refused nor answered
    lp = {"model": "llama3.2:1b", "messages": USER, "stream": False, "logprobs": True}
    before = ollama_standin_factory(version="0.12.10")
    r = _post(before, "/api/chat", {**lp, "top_logprobs": 99})
    assert r.status_code == 200 and "logprobs" not in r.json()
    assert _post(new, "/api/chat", {**lp, "top_logprobs": 99}).status_code == 400
    assert _post(new, "/api/chat", lp).json()["logprobs"]

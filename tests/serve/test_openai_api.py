"""OpenAI's API through the proxy, driven by the ``openai`` client and ``ChatOpenAI``."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import BaseModel
from servekit import CPU_ONLY, EMBED, MODEL, Proxy

from langchain_contextharbor.testing import Fault, OllamaStandIn

openai = pytest.importorskip("openai")
langchain_openai = pytest.importorskip("langchain_openai")

Pair = tuple[OllamaStandIn, OllamaStandIn]
HI = [{"role": "user", "content": "hi"}]


def oa(proxy: Proxy, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, timeout=30, max_retries=0)


def test_chat_completion_and_stream(proxy: Proxy) -> None:
    c = oa(proxy)
    r = c.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == f"Hello from gpu ({MODEL}). You said: hi"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens > 0
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage is not None and not chunks[-1].choices
    # The wire: SSE data lines, closed by [DONE].
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HI, "stream": True},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [x for x in resp.iter_lines() if x]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert proxy.state.decisions[-1]["endpoint"] == "/v1/chat/completions"


def test_tools_and_response_format(proxy: Proxy) -> None:
    c = oa(proxy)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    r = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
    )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments).keys() == {"city"}  # type: ignore[union-attr]
    schema = {
        "type": "object",
        "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
        "required": ["setup", "punchline"],
    }
    r = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a joke"}],
        response_format={"type": "json_schema", "json_schema": {"name": "joke", "schema": schema}},
    )
    assert json.loads(r.choices[0].message.content or "").keys() == {"setup", "punchline"}


def test_embeddings_float_and_base64_match_the_native_api(proxy: Proxy) -> None:
    native = httpx.post(f"{proxy.url}/api/embed", json={"model": EMBED, "input": ["a", "b"]})
    want = native.json()["embeddings"]
    c = oa(proxy)
    got = c.embeddings.create(model=EMBED, input=["a", "b"])  # base64 on the wire
    assert [d.embedding for d in got.data] == [pytest.approx(v, rel=1e-6) for v in want]
    flt = c.embeddings.create(model=EMBED, input="a", encoding_format="float")
    assert flt.data[0].embedding == pytest.approx(want[0])


def test_models(proxy: Proxy) -> None:
    ids = {m.id for m in oa(proxy).models.list()}
    assert {MODEL, CPU_ONLY} <= ids
    assert oa(proxy).models.retrieve(CPU_ONLY).id == CPU_ONLY
    with pytest.raises(openai.NotFoundError):
        oa(proxy).models.retrieve("nope:1b")


def test_missing_model_is_openais_404(proxy: Proxy) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        oa(proxy).chat.completions.create(model="nope:1b", messages=HI)  # type: ignore[arg-type]
    assert err.value.body["type"] == "not_found_error"  # type: ignore[index]


def test_chatopenai_invoke_stream_tools_structured(proxy: Proxy) -> None:
    llm = langchain_openai.ChatOpenAI(
        model=MODEL, base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0
    )
    assert llm.invoke("hi").content == f"Hello from gpu ({MODEL}). You said: hi"
    assert "".join(str(c.content) for c in llm.stream("hi")).startswith("Hello from gpu")

    def get_weather(city: str) -> str:
        """Get the weather of a city."""
        return "sunny"

    bound = llm.bind_tools([get_weather])
    msg = bound.invoke("What is the weather in Paris?")
    assert [t["name"] for t in msg.tool_calls] == ["get_weather"]
    chunks = list(bound.stream("What is the weather in Paris?"))
    streamed = chunks[0]
    for c in chunks[1:]:
        streamed = streamed + c
    assert [t["name"] for t in streamed.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]
    assert streamed.response_metadata.get("finish_reason") == "tool_calls"

    class Joke(BaseModel):
        setup: str
        punchline: str

    assert isinstance(llm.with_structured_output(Joke).invoke("Tell me a joke"), Joke)


def test_gpu_dead_before_the_first_token_the_cpu_answers(proxy: Proxy, pair: Pair) -> None:
    gpu, _ = pair
    gpu.inject(Fault.CUT_MID_STREAM, after_chunks=0, count=1)
    chunks = list(
        oa(proxy).chat.completions.create(
            model=MODEL,
            messages=HI,  # type: ignore[arg-type]
            stream=True,
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == f"Hello from cpu ({MODEL}). You said: hi"


def test_after_the_first_token_the_client_raises_apierror(proxy: Proxy, pair: Pair) -> None:
    gpu, cpu = pair
    gpu.inject(Fault.CUT_MID_STREAM, after_chunks=2, count=1)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for ch in oa(proxy).chat.completions.create(
            model=MODEL,
            messages=HI,  # type: ignore[arg-type]
            stream=True,
        ):
            seen.append(ch.choices[0].delta.content or "")
    assert "cannot continue" in str(err.value)
    assert "".join(seen) == "Hello from"
    assert not cpu.requests_to("/api/chat")

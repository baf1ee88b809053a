"""ollama-python (``ollama.Client``), the client ChatOllama is built on, against the stand-in.

The same cases as the ollama-js and LiteLLM modules, through the typed models of the
official Python client: a field the stand-in leaves out or mistypes fails here.
"""

from __future__ import annotations

import json
import math

import jsonschema
import ollama
import pytest
from fidelitykit import CAPITAL_SCHEMA, OPTIONS, WEATHER_TOOL, Target


@pytest.fixture(scope="module")
def client(target: Target) -> ollama.Client:
    return ollama.Client(host=target.url, timeout=300)


def _hello() -> list[dict[str, str]]:
    return [{"role": "user", "content": "Say hello."}]


def test_chat(target: Target, client: ollama.Client) -> None:
    resp = client.chat(model=target.chat_model, messages=_hello(), options=OPTIONS)
    assert resp.done and resp.done_reason in ("stop", "length")
    assert resp.message.role == "assistant" and resp.message.content
    assert resp.model == target.chat_model and (resp.eval_count or 0) > 0


def test_stream(target: Target, client: ollama.Client) -> None:
    parts = list(
        client.chat(model=target.chat_model, messages=_hello(), options=OPTIONS, stream=True)
    )
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)


def test_tools(target: Target, client: ollama.Client) -> None:
    msgs = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    if not target.tools:  # SmolLM2, like the real model in Ollama, has no tools capability
        with pytest.raises(ollama.ResponseError) as info:
            client.chat(model=target.chat_model, messages=msgs, tools=[WEATHER_TOOL])
        assert info.value.status_code == 400
        assert info.value.error.endswith(f"{target.chat_model} does not support tools")
        return
    resp = client.chat(model=target.chat_model, messages=msgs, tools=[WEATHER_TOOL])
    calls = resp.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert isinstance(calls[0].function.arguments, dict) and "city" in calls[0].function.arguments


def test_structured_output(target: Target, client: ollama.Client) -> None:
    resp = client.chat(
        model=target.chat_model,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        format=CAPITAL_SCHEMA,
        options={"temperature": 0, "seed": 1},
    )
    jsonschema.validate(json.loads(resp.message.content or ""), CAPITAL_SCHEMA)


def test_embed(target: Target, client: ollama.Client) -> None:
    resp = client.embed(model=target.embed_model, input=["Cats purr.", "Dogs bark."])
    assert [len(v) for v in resp.embeddings] == [target.dims, target.dims]
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in resp.embeddings)


def test_tags_ps_show(target: Target, client: ollama.Client) -> None:
    assert target.chat_model in {m.model for m in client.list().models}
    client.chat(model=target.chat_model, messages=_hello(), options=OPTIONS)
    loaded = {m.model: m for m in client.ps().models}
    assert loaded[target.chat_model].context_length == 4096
    show = client.show(target.chat_model)
    assert show.capabilities and "completion" in show.capabilities
    info = show.modelinfo or {}
    arch = info["general.architecture"]
    embed_show = client.show(target.embed_model).modelinfo or {}
    assert embed_show[f"{embed_show['general.architecture']}.embedding_length"] == target.dims
    assert f"{arch}.context_length" in info


def test_missing_model_is_a_404(target: Target, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="no-such-model", messages=_hello())
    assert (info.value.status_code, info.value.error) == (404, "model 'no-such-model' not found")

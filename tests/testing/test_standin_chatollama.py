"""Plain ChatOllama works against the stand-in for everything the router forwards.

Streaming, tool calls, every ``with_structured_output`` method, thinking and usage metadata
must round-trip through the real ChatOllama, or router tests built on the stand-in would test
the fake instead of the integration.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from pydantic import BaseModel, Field

from langchain_contextharbor.testing import (
    ChatTurn,
    OllamaStandIn,
    ScriptedEngine,
    StandInModel,
    ToolDecision,
)
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


class Person(BaseModel):
    """A person with an address."""

    name: str
    age: int = Field(ge=0, le=150)
    nickname: str | None = None
    emails: list[str]
    address: Address


class Address(BaseModel):
    street: str
    zip_code: str


Person.model_rebuild()


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city."""
    return f"22 degrees {unit} in {city}"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture(scope="module")
def srv(ollama_standin_module_factory: StandInFactory) -> OllamaStandIn:
    return ollama_standin_module_factory(
        name="gpu",
        models=[MODEL, StandInModel("qwen3:8b", capabilities=["completion", "tools", "thinking"])],
        loaded=[MODEL],
    )


@pytest.fixture
def llm(srv: OllamaStandIn) -> ChatOllama:
    return ChatOllama(model=MODEL, base_url=srv.url, client_kwargs={"timeout": 5})


async def test_stream_and_astream(llm: ChatOllama) -> None:
    chunks = list(llm.stream("hi"))
    assert len(chunks) > 3
    full: Any = None
    for c in chunks:
        full = c if full is None else full + c
    assert isinstance(full, AIMessageChunk)
    assert full.content == "Hello from gpu (llama3.2:1b). You said: hi"
    achunks = [c async for c in llm.astream("hi")]
    assert len(achunks) == len(chunks)


async def test_usage_metadata(llm: ChatOllama) -> None:
    msg = llm.invoke("one two three four")
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["input_tokens"] == 4
    assert msg.usage_metadata["output_tokens"] == len(
        "Hello from gpu (llama3.2:1b). You said: one two three four".split()
    )
    assert msg.response_metadata["model_name"] == MODEL
    amsg = await llm.ainvoke("x")
    assert amsg.usage_metadata and amsg.usage_metadata["total_tokens"] > 0


def test_tool_calling_loop(llm: ChatOllama) -> None:
    bound = llm.bind_tools([add, get_weather])
    first = bound.invoke("What's the weather in Paris?")
    assert isinstance(first, AIMessage)
    assert [c["name"] for c in first.tool_calls] == ["get_weather"]
    assert first.tool_calls[0]["args"]["city"] == "Paris"
    assert first.tool_calls[0]["id"]
    result = get_weather.invoke(first.tool_calls[0])
    assert isinstance(result, ToolMessage)
    final = bound.invoke([HumanMessage("What's the weather in Paris?"), first, result])
    assert not final.tool_calls
    assert "22 degrees celsius in Paris" in str(final.content)
    summed = bound.invoke("add 2 and 40")
    assert summed.tool_calls[0]["args"] == {"a": 2, "b": 40}
    streamed: Any = None
    for chunk in bound.stream("add 2 and 40"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls[0]["name"] == "add"


def test_custom_tool_policy(ollama_standin_factory: StandInFactory) -> None:
    def policy(turn: ChatTurn) -> ToolDecision | None:
        return ToolDecision("add", {"a": 1, "b": 1}) if "sum" in turn.last_user_text else None

    srv = ollama_standin_factory(name="p", engine=ScriptedEngine(tool_policy=policy))
    bound = ChatOllama(model=MODEL, base_url=srv.url).bind_tools([add, get_weather])
    assert bound.invoke("sum please").tool_calls[0]["args"] == {"a": 1, "b": 1}
    assert bound.invoke("weather?").tool_calls == []
    never = ollama_standin_factory(name="n", engine=ScriptedEngine(tool_policy="never"))
    assert (
        ChatOllama(model=MODEL, base_url=never.url).bind_tools([add]).invoke("add").tool_calls == []
    )


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
async def test_structured_output_methods(llm: ChatOllama, method: str) -> None:
    prompt = "Tell me a joke about cats. Respond in JSON with 'setup' and 'punchline' keys."
    chain = llm.with_structured_output(Joke, method=method)  # type: ignore[arg-type]
    joke = chain.invoke(prompt)
    assert isinstance(joke, Joke)
    if method != "function_calling":
        assert joke.setup == "setup from gpu"
    streamed = list(chain.stream(prompt))
    assert streamed and isinstance(streamed[-1], Joke)
    ajoke = await chain.ainvoke(prompt)
    assert isinstance(ajoke, Joke)
    raw = llm.with_structured_output(Joke, method=method, include_raw=True)  # type: ignore[arg-type]
    out = raw.invoke(prompt)
    assert isinstance(out, dict) and out["parsing_error"] is None


def test_structured_output_nested_and_optional(llm: ChatOllama) -> None:
    person = llm.with_structured_output(Person).invoke("Describe a person aged 42.")
    assert isinstance(person, Person)
    assert person.age == 42 and person.emails and person.address.zip_code
    assert person.nickname is None  # a defaulted field keeps its default
    as_dict = llm.with_structured_output(Person.model_json_schema()).invoke("aged 7")
    assert isinstance(as_dict, dict) and as_dict["age"] == 7


def test_ollama_python_strips_tool_schemas(llm: ChatOllama, srv: OllamaStandIn) -> None:
    """ollama-python 0.6 keeps only type/items/description/enum of each tool property.

    Defaults, nested ``properties``, ``anyOf`` and bounds never reach the server, so no model
    behind Ollama can see them: nested ``function_calling`` output cannot be guaranteed valid.
    This pins that fact for the router's authors; the stand-in serves what arrives.
    """
    llm.bind_tools([get_weather, Person]).invoke("weather in Oslo")
    (req,) = srv.requests_to("/api/chat")[-1:]
    weather, person = (t["function"]["parameters"]["properties"] for t in req.body["tools"])
    assert weather["unit"] == {"type": "string"}  # "default": "celsius" dropped
    assert person["address"] == {"type": "object"}  # nested properties dropped


def test_reasoning(srv: OllamaStandIn) -> None:
    llm = ChatOllama(model="qwen3:8b", base_url=srv.url, reasoning=True)
    msg = llm.invoke("hi")
    assert msg.additional_kwargs.get("reasoning_content")
    assert str(msg.content).startswith("Hello from gpu (qwen3:8b)")


def test_model_override_and_stop(llm: ChatOllama, srv: OllamaStandIn) -> None:
    msg = llm.invoke("hi", model="qwen3:8b")
    assert msg.response_metadata["model_name"] == "qwen3:8b"
    assert llm.invoke("hi", stop=["(llama"]).content == "Hello from gpu "
    capped = ChatOllama(model=MODEL, base_url=srv.url, num_predict=2).invoke("hi")
    assert capped.content == "Hello from" and capped.response_metadata["done_reason"] == "length"

"""Stand-in behaviour that blocked real users: null options, MoE sizes, the packaged NVML
fixture, and tool calls only when the question calls for one."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import httpx
import ollama
import pytest
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings

from langchain_contextharbor.sizing import parse_parameter_size as sizing_parameter_size
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.fake_nvml import FakeNVML, find_h200_fixture
from langchain_contextharbor.testing.models import parse_parameter_size
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

REPO = Path(__file__).resolve().parents[2]
MODEL = "llama3.2:1b"


@pytest.fixture
def srv(ollama_standin_factory: StandInFactory) -> OllamaStandIn:
    return ollama_standin_factory(name="gpu", models=[MODEL, "all-minilm"])


# ------------------------------------------------------------------ null options
def test_real_ollama_embeddings_sends_null_options_and_is_served(srv: OllamaStandIn) -> None:
    emb = OllamaEmbeddings(model="all-minilm", base_url=srv.url)
    vectors = emb.embed_documents(["hello world", "good night"])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert len(emb.embed_query("hello")) == 384
    sent = srv.requests_to("/api/embed")[0].body["options"]
    # What made the stand-in answer 500 before: OllamaEmbeddings sends unset options as null.
    assert sent["mirostat"] is None and sent["temperature"] is None


async def test_real_ollama_embeddings_async(srv: OllamaStandIn) -> None:
    emb = OllamaEmbeddings(model="all-minilm", base_url=srv.url)
    assert len(await emb.aembed_query("hello")) == 384


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed"])
def test_null_options_are_ignored_on_every_endpoint(srv: OllamaStandIn, path: str) -> None:
    body = {
        "model": "all-minilm" if path == "/api/embed" else MODEL,
        "stream": False,
        "options": {"num_ctx": None, "temperature": None, "stop": None, "mirostat": None},
        "messages": [{"role": "user", "content": "hi"}],
        "prompt": "hi",
        "input": "hi",
    }
    r = httpx.post(srv.url + path, json=body)
    assert r.status_code == 200, r.text
    # A non-null value of the wrong type is still refused, as by Ollama.
    body["options"] = {"mirostat": "x"}
    r = httpx.post(srv.url + path, json=body)
    assert r.status_code == 500 and "must be of type integer" in r.json()["error"]


def test_ollama_python_client_with_null_options(srv: OllamaStandIn) -> None:
    client = ollama.Client(host=srv.url)
    res = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        options={
            "temperature": None,
            "num_ctx": None,
        },
    )
    assert "You said: hi" in (res.message.content or "")


# ------------------------------------------------------------------ mixture-of-experts sizes
def test_mixture_of_experts_parameter_sizes() -> None:
    assert parse_parameter_size("8x7B") == 56e9
    assert parse_parameter_size("8x22b") == 176e9
    assert sizing_parameter_size("8x7B") == 56.0
    model = StandInModel("mixtral:8x22b")
    assert model.parameter_size == "176B" and model.parameter_count == 176_000_000_000
    with pytest.raises(ValueError, match="unparseable"):
        parse_parameter_size("lots")


# ------------------------------------------------------------------ packaged NVML fixture
def test_nvml_fixture_ships_inside_the_package() -> None:
    path = find_h200_fixture()
    package = REPO / "langchain_contextharbor"
    assert path.is_relative_to(package), path
    pyproject = (REPO / "pyproject.toml").read_text()
    line = next(x for x in pyproject.splitlines() if x.startswith("langchain_contextharbor = ["))
    globs = [g.strip(' "') for g in line.split("[", 1)[1].rstrip("]").split(",")]
    assert any(fnmatch(str(path.relative_to(package)), g) for g in globs), globs
    fake = FakeNVML.from_fixture()
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 1


# ------------------------------------------------------------------ tools only when asked for
@tool
def get_weather(city: str) -> str:
    """Weather of a city."""
    return f"sunny in {city}"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Hello!", None),
        ("Tell me about the history of Paris.", None),
        ("What is the weather in Paris?", "get_weather"),
        ("add 2 and 40", "add"),
        ("call get_weather for Oslo", "get_weather"),
        ("Use the tool, please.", "get_weather"),
    ],
)
def test_scripted_engine_calls_a_tool_only_when_the_question_calls_for_it(
    srv: OllamaStandIn, question: str, expected: str | None
) -> None:
    msg = ChatOllama(model=MODEL, base_url=srv.url).bind_tools([get_weather, add]).invoke(question)
    names = [c["name"] for c in msg.tool_calls]
    assert names == ([expected] if expected else [])
    if expected is None:
        assert "You said:" in str(msg.content)

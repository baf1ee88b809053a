"""HybridOllamaEmbeddings takes exactly what OllamaEmbeddings takes (and its own options),
refuses the rest at construction, and sends headers and options on every backend.

Before, a typo or ``sync_client_kwargs`` was accepted and ignored, ``client_kwargs``
headers were never sent, and ``dimensions=0`` failed at the first call. Over real HTTP
against the stand-in (its dispatch is wrapped to read the headers it receives)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from langchain_ollama import OllamaEmbeddings
from ragkit import EMBED, ROOMY

from langchain_contextharbor import (
    ConfigurationError,
    HybridOllamaEmbeddings,
    ModelNotAvailableError,
)
from langchain_contextharbor.errors import ModelValidationError
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.pytest_plugin import StandInFactory


def _headers_seen(srv: OllamaStandIn) -> list[dict[str, str]]:
    """Path and headers of every request ``srv`` receives from now on."""
    seen: list[dict[str, str]] = []
    dispatch = srv._dispatch

    def recording(handler: Any) -> None:
        seen.append({":path": handler.path, **{k.lower(): v for k, v in handler.headers.items()}})
        dispatch(handler)

    srv._dispatch = recording  # type: ignore[method-assign]
    return seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_ollama_embeddings_argument_is_a_field() -> None:
    ours = set(HybridOllamaEmbeddings.model_fields)
    missing = set(OllamaEmbeddings.model_fields) - ours
    assert missing == set()


def test_unknown_arguments_and_bad_dimensions_are_refused_at_construction(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, _ = pair
    with pytest.raises(ConfigurationError, match="foo"):
        HybridOllamaEmbeddings(model=EMBED, base_url=gpu.url, foo=1)
    for bad in (0, -3):
        with pytest.raises(ConfigurationError, match="dimensions"):
            HybridOllamaEmbeddings(model=EMBED, base_url=gpu.url, dimensions=bad)
    with pytest.raises(ConfigurationError, match="transport"):
        HybridOllamaEmbeddings(model=EMBED, base_url=gpu.url, async_client_kwargs={"transport": 1})
    assert not gpu.requests_to("/api/embed")


def test_headers_of_every_kind_reach_the_wire(pair: tuple[OllamaStandIn, OllamaStandIn]) -> None:
    gpu, _ = pair
    seen = _headers_seen(gpu)
    emb = HybridOllamaEmbeddings(
        model=EMBED,
        base_url=gpu.url,
        timeouts=ROOMY,
        client_kwargs={"headers": {"Authorization": "Bearer tok-1", "X-Side": "shared"}},
        sync_client_kwargs={"headers": {"X-Side": "sync"}},
        async_client_kwargs={"headers": {"X-Side": "async"}},
    )
    emb.embed_query("hello")
    sent = [h for h in seen if h[":path"] == "/api/embed"]
    assert sent and sent[-1]["authorization"] == "Bearer tok-1" and sent[-1]["x-side"] == "sync"
    seen.clear()
    asyncio.run(emb.aembed_query("hello"))
    sent = [h for h in seen if h[":path"] == "/api/embed"]
    assert sent and sent[-1]["authorization"] == "Bearer tok-1" and sent[-1]["x-side"] == "async"
    assert "tok-1" not in repr(emb) and "tok-1" not in str(vars(emb))
    emb.close()


def test_shared_router_embeddings_send_their_own_headers(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    own = HybridOllamaEmbeddings(model=EMBED, gpu_url=gpu.url, cpu_url=cpu.url, timeouts=ROOMY)
    seen_gpu, seen_cpu = _headers_seen(gpu), _headers_seen(cpu)
    emb = HybridOllamaEmbeddings(
        model=EMBED, router=own.shared_router, client_kwargs={"headers": {"X-Key": "k"}}
    )
    emb.embed_documents(["a", "b"])
    sent = [h for h in seen_gpu + seen_cpu if h[":path"] == "/api/embed"]
    assert sent and all(h["x-key"] == "k" for h in sent)
    emb.close()
    own.close()


def test_options_reach_api_embed_as_ollama_embeddings_sends_them(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, _ = pair
    opts: dict[str, Any] = {
        "temperature": 0.5,
        "stop": ["x"],
        "top_k": 7,
        "top_p": 0.5,
        "mirostat": 1,
        "mirostat_eta": 0.2,
        "mirostat_tau": 4.0,
        "repeat_last_n": 8,
        "repeat_penalty": 1.2,
        "tfs_z": 1.0,
        "num_ctx": 2048,
    }
    emb = HybridOllamaEmbeddings(model=EMBED, base_url=gpu.url, timeouts=ROOMY, **opts)
    emb.embed_query("hello")
    ours = gpu.requests_to("/api/embed")[-1].body["options"]
    ref = OllamaEmbeddings(model=EMBED, base_url=gpu.url, **opts)
    ref.embed_query("hello")
    theirs = gpu.requests_to("/api/embed")[-1].body["options"]
    assert ours == theirs and ours["top_k"] == 7 and ours["stop"] == ["x"]
    emb.close()


def test_validate_model_on_init(pair: tuple[OllamaStandIn, OllamaStandIn]) -> None:
    gpu, _ = pair
    HybridOllamaEmbeddings(model=EMBED, base_url=gpu.url, validate_model_on_init=True).close()
    with pytest.raises(ValueError, match="ollama pull") as info:
        HybridOllamaEmbeddings(model="nosuch-embed", base_url=gpu.url, validate_model_on_init=True)
    assert isinstance(info.value, ModelNotAvailableError)
    assert isinstance(info.value, ModelValidationError)
    with pytest.raises(ValueError) as down:
        HybridOllamaEmbeddings(
            model=EMBED, base_url=f"http://127.0.0.1:{_free_port()}", validate_model_on_init=True
        )
    assert isinstance(down.value, ModelValidationError)
    assert isinstance(down.value, ConnectionError)


def test_dimensions_are_sent(ollama_standin_factory: StandInFactory) -> None:
    srv = ollama_standin_factory(name="solo", models=[EMBED])
    emb = HybridOllamaEmbeddings(model=EMBED, base_url=srv.url, dimensions=8, timeouts=ROOMY)
    assert len(emb.embed_query("hi")) == 8
    assert srv.requests_to("/api/embed")[-1].body["dimensions"] == 8
    emb.close()

"""The embeddings' inner clients follow the chat model's lifecycle (one pool for both).

Before the shared pool the embeddings dropped their clients without closing them (on
``close()`` and with each finished event loop) and kept serving a parameter set after the
first call with the inner models built before it. Over real HTTP against the stand-in."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Callable
from typing import Any

from ragkit import EMBED

from langchain_contextharbor import HybridOllamaEmbeddings
from langchain_contextharbor.testing import OllamaStandIn

MakeEmb = Callable[..., HybridOllamaEmbeddings]


def _http(inner: Any, attr: str) -> Any:
    """The httpx client under an inner OllamaEmbeddings' ollama client."""
    return getattr(inner, attr)._client


def test_close_closes_the_sync_clients_and_the_model_stays_usable(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu)
    emb.embed_query("hello")
    inner = emb._inner("gpu")
    emb.close()
    assert _http(inner, "_client").is_closed
    assert emb.embed_query("again")  # built anew on use
    assert emb._inner("gpu") is not inner


def test_async_clients_are_closed_with_their_loops(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu)
    inners: list[Any] = []

    async def once() -> None:
        await emb.aembed_query("hi")
        inners.append(emb._ainner(emb.last_batches[0].backend))

    gc.collect()  # only this test's own clients count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            asyncio.run(once())
        gc.collect()
    assert len({id(i) for i in inners}) == 5  # one per loop
    assert all(_http(i, "_async_client").is_closed for i in inners)
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks[:3]]


async def test_aclose_closes_the_running_loops_clients_now(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu)
    await emb.aembed_query("hi")
    inner = emb._ainner("gpu")
    await emb.aclose()
    assert _http(inner, "_async_client").is_closed
    assert await emb.aembed_query("again")
    assert emb._ainner("gpu") is not inner


def test_a_parameter_set_after_the_first_call_reaches_the_server(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu)
    emb.embed_query("hello")
    emb.keep_alive = 42
    emb.embed_query("hello again")
    bodies = [r.body for r in gpu.requests_to("/api/embed")]
    assert "keep_alive" not in bodies[0] and bodies[-1]["keep_alive"] == 42
    emb.model = EMBED + ":latest"  # the model too
    assert emb._inner("gpu").model == EMBED + ":latest"

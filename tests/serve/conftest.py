"""The proxy over real HTTP: uvicorn in a thread on a free loopback port, in front of a GPU
and a CPU stand-in, driven by clients nobody here wrote."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from servekit import CPU_ONLY, EMBED, MODEL, Proxy, backends_for, start_proxy

from langchain_contextharbor.serve import ServeConfig, create_app
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    """A GPU and a CPU stand-in; the embedding model on both (same build), one chat model
    only on the CPU one."""
    gpu = ollama_standin_factory(name="gpu", models=[MODEL, StandInModel(EMBED)], gpu_fraction=1.0)
    cpu = ollama_standin_factory(
        name="cpu", models=[MODEL, StandInModel(EMBED), CPU_ONLY], gpu_fraction=0.0
    )
    return gpu, cpu


@pytest.fixture
def make_proxy(pair: tuple[OllamaStandIn, OllamaStandIn]) -> Iterator[Callable[..., Proxy]]:
    made: list[Proxy] = []

    def make(config: ServeConfig | None = None, **options: Any) -> Proxy:
        gpu, cpu = pair
        options.setdefault("backends", backends_for(gpu, cpu))
        p = start_proxy(create_app(config, **options))
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def proxy(make_proxy: Callable[..., Proxy]) -> Proxy:
    return make_proxy()

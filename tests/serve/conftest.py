"""Fixtures for the serve tests: a GPU and a CPU stand-in, and an ASGI app on real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_contextharbor import BackendConfig, Timeouts
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.asgi import ServedApp
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    """A GPU stand-in and a CPU stand-in with the test model (function scope)."""
    models: list[StandInModel | str] = [MODEL]
    gpu = ollama_standin_factory(name="gpu", models=models, gpu_fraction=1.0)
    cpu = ollama_standin_factory(name="cpu", models=models, gpu_fraction=0.0)
    return gpu, cpu


@pytest.fixture
def configs(pair: tuple[OllamaStandIn, OllamaStandIn]) -> list[BackendConfig]:
    """The two stand-ins as backends, with deadlines a loaded CI machine cannot run out of."""
    gpu, cpu = pair
    t = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
    return [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=t),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=t),
    ]


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], ServedApp]]:
    """Serve ASGI apps on loopback ports for the test; all stopped after it."""
    made: list[ServedApp] = []

    def serve(app: Any) -> ServedApp:
        s = ServedApp(app)
        made.append(s)
        return s

    yield serve
    for s in made:
        s.close()

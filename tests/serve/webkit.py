"""Helpers of the status page, web example and smart_chat_stream tests: a GPU and a CPU
stand-in, their backend configs, ASGI apps served on real HTTP.

Plain functions, not a conftest.py: the proxy's tests keep their own conftest (and stand-ins)
in this folder; each test module here wraps these in its own small fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from langchain_contextharbor import BackendConfig, Timeouts
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.asgi import ServedApp
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"


def standins(factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    """A GPU stand-in and a CPU stand-in with the test model."""
    models: list[StandInModel | str] = [MODEL]
    gpu = factory(name="gpu", models=models, gpu_fraction=1.0)
    cpu = factory(name="cpu", models=models, gpu_fraction=0.0)
    return gpu, cpu


def configs_for(gpu: OllamaStandIn, cpu: OllamaStandIn) -> list[BackendConfig]:
    """The two stand-ins as backends, with deadlines a loaded CI machine cannot run out of."""
    t = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
    return [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=t),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=t),
    ]


def app_server() -> Iterator[Callable[[Any], ServedApp]]:
    """A fixture body: serve ASGI apps on loopback ports; all stopped afterwards."""
    made: list[ServedApp] = []

    def serve(app: Any) -> ServedApp:
        s = ServedApp(app)
        made.append(s)
        return s

    yield serve
    for s in made:
        s.close()

"""Shared fixtures for the HybridChatOllama tests: a GPU and a CPU stand-in over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_contextharbor import BackendConfig, HybridChatOllama, Timeouts
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
OVERRIDE_MODEL = "qwen2.5:0.5b"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    """A GPU stand-in and a CPU stand-in, both with the test models (function scope)."""
    models: list[StandInModel | str] = [MODEL, StandInModel(OVERRIDE_MODEL)]
    gpu = ollama_standin_factory(name="gpu", models=models, gpu_fraction=1.0)
    cpu = ollama_standin_factory(name="cpu", models=models, gpu_fraction=0.0)
    return gpu, cpu


def backends_for(
    gpu: OllamaStandIn, cpu: OllamaStandIn, timeouts: Timeouts | None = None
) -> list[BackendConfig]:
    # Deadlines a loaded CI machine cannot run out of: a test that provokes a timeout passes
    # its own short ones.
    t = timeouts or Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
    return [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=t),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=t),
    ]


@pytest.fixture
def make_model(
    pair: tuple[OllamaStandIn, OllamaStandIn], clock: FakeClock
) -> Iterator[Callable[..., HybridChatOllama]]:
    """Build HybridChatOllama instances over ``pair`` with the fake clock; closed after."""
    made: list[HybridChatOllama] = []

    def make(**kw: Any) -> HybridChatOllama:
        gpu, cpu = pair
        timeouts = kw.pop("timeouts", None)
        params: dict[str, Any] = {
            "model": MODEL,
            "backends": backends_for(gpu, cpu, timeouts),
            "clock": clock,
            "background_probes": False,
        }
        params.update(kw)
        m = HybridChatOllama(**params)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()

"""Fixtures of the RAG tests: a GPU and a CPU stand-in holding a chat and an embedding model."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `import ragkit` under any import mode

from ragkit import EMBED, ROOMY, backends_for, make_pair

from langchain_contextharbor import HybridOllamaEmbeddings
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    """GPU and CPU stand-ins holding the same build of the embedding model."""
    return make_pair(ollama_standin_factory)


@pytest.fixture
def make_embeddings(clock: FakeClock) -> Iterator[Callable[..., HybridOllamaEmbeddings]]:
    """Build HybridOllamaEmbeddings over two stand-ins with the fake clock; closed after."""
    made: list[HybridOllamaEmbeddings] = []

    def make(gpu: OllamaStandIn, cpu: OllamaStandIn, **kw: Any) -> HybridOllamaEmbeddings:
        params: dict[str, Any] = {
            "model": EMBED,
            "backends": backends_for(gpu, cpu, kw.pop("timeouts", ROOMY)),
            "clock": clock,
            "background_probes": False,
        }
        params.update(kw)
        emb = HybridOllamaEmbeddings(**params)
        made.append(emb)
        return emb

    yield make
    for emb in made:
        emb.close()

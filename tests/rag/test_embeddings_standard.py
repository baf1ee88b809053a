"""langchain-tests' standard embeddings suites, run on HybridOllamaEmbeddings over two stand-ins.

The same suites that LangChain's own integrations pass: a drop-in ``Embeddings``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from ragkit import EMBED, backends_for, make_pair

from langchain_contextharbor import HybridOllamaEmbeddings
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

_PAIR: dict[str, tuple[OllamaStandIn, OllamaStandIn]] = {}


@pytest.fixture(scope="module", autouse=True)
def _pair(ollama_standin_module_factory: StandInFactory) -> Iterator[None]:
    _PAIR["pair"] = make_pair(ollama_standin_module_factory)
    yield
    _PAIR.clear()


class TestHybridEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return HybridOllamaEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": EMBED, "backends": backends_for(*_PAIR["pair"])}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        env = {"OLLAMA_GPU_URL": "http://127.0.0.1:21434", "OLLAMA_CPU_URL": ""}
        return env, {"model": EMBED}, {"gpu_url": "http://127.0.0.1:21434", "cpu_url": ""}


class TestHybridEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return HybridOllamaEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": EMBED, "backends": backends_for(*_PAIR["pair"])}

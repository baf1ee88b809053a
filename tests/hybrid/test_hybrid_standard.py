"""langchain-tests' standard suites on HybridChatOllama, over real HTTP to two stand-ins.

The integration suite runs twice: with both servers up, and with the GPU stand-in stopped
(connection refused), which must be invisible to every standard test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_contextharbor import BackendConfig, HybridChatOllama, Timeouts
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
OVERRIDE_MODEL = "qwen2.5:0.5b"
_NO_INTERNET = "downloads a picture from the internet, which is unreachable here"
_SERVERS: dict[str, OllamaStandIn] = {}


@pytest.fixture(scope="module", autouse=True)
def _servers(ollama_standin_module_factory: StandInFactory) -> Iterator[None]:
    models: list[StandInModel | str] = [MODEL, StandInModel(OVERRIDE_MODEL)]
    _SERVERS["gpu"] = ollama_standin_module_factory(
        name="gpu", models=models, loaded=[MODEL], gpu_fraction=1.0
    )
    _SERVERS["cpu"] = ollama_standin_module_factory(
        name="cpu", models=models, loaded=[MODEL], gpu_fraction=0.0
    )
    yield
    _SERVERS.clear()


def _params() -> dict[str, Any]:
    t = Timeouts(connect=1.0, first_token=10.0, idle=5.0)
    return {
        "model": MODEL,
        "temperature": 0,
        "backends": [
            BackendConfig(name="gpu", base_url=_SERVERS["gpu"].url, kind="gpu", timeouts=t),
            BackendConfig(name="cpu", base_url=_SERVERS["cpu"].url, kind="cpu", timeouts=t),
        ],
    }


class _Flags:
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return HybridChatOllama

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        # Ollama has no tool_choice: bind_tools narrows the tools sent, but nothing forces a
        # call, and the stand-in (like a real model) answers "Hello!" in text.
        return False

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return OVERRIDE_MODEL


class TestHybridUnit(_Flags, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "backends": [
                {"name": "gpu", "base_url": "http://127.0.0.1:9", "kind": "gpu"},
                {"name": "cpu", "base_url": "http://127.0.0.1:10", "kind": "cpu"},
            ],
        }

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"OLLAMA_GPU_URL": "http://127.0.0.1:21434", "OLLAMA_CPU_URL": ""},
            {"model": MODEL},
            {"gpu_url": "http://127.0.0.1:21434", "cpu_url": ""},
        )


class TestHybridIntegration(_Flags, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params()

    @pytest.mark.skip(reason=_NO_INTERNET)
    @pytest.mark.xfail(reason=_NO_INTERNET)
    def test_image_inputs(self, model: BaseChatModel) -> None:
        super().test_image_inputs(model)


class TestHybridIntegrationGpuDown(TestHybridIntegration):
    """The same suite with the GPU stand-in refusing connections: the CPU serves all."""

    @pytest.fixture(autouse=True)
    def _gpu_down(self) -> Iterator[None]:
        gpu = _SERVERS["gpu"]
        gpu.stop()
        try:
            yield
        finally:
            gpu.start()

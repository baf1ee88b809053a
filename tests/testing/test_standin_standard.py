"""langchain-tests' standard integration suite, run on plain ChatOllama against a stand-in.

If unmodified ChatOllama passes the standard suite against the stand-in, the stand-in is
faithful enough that the same suite run on HybridChatOllama tests the router, not the fake.
The scripted engine cooperates like a good model: it calls the bound tool with arguments taken
from the prompt and answers ``format`` requests with valid JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_ollama import ChatOllama
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
OVERRIDE_MODEL = "qwen2.5:0.5b"

_STANDIN: dict[str, OllamaStandIn] = {}
_NO_INTERNET = "downloads a picture from the internet, which is unreachable here"


@pytest.fixture(scope="module", autouse=True)
def _standin(ollama_standin_module_factory: StandInFactory) -> Iterator[OllamaStandIn]:
    srv = ollama_standin_module_factory(
        name="standard",
        models=[MODEL, StandInModel(OVERRIDE_MODEL)],
        loaded=[MODEL],
    )
    _STANDIN["srv"] = srv
    yield srv
    _STANDIN.clear()


class TestChatOllamaOnStandIn(ChatModelIntegrationTests):
    """ChatOllama (unmodified) pointed at a scripted stand-in."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatOllama

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "base_url": _STANDIN["srv"].url,
            "temperature": 0,
            "client_kwargs": {"timeout": 10},
        }

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        # ChatOllama accepts tool_choice in bind_tools but drops it: nothing forces a call.
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

    # skip wins over xfail; the xfail reason is what langchain-tests' override guard
    # (test_no_overrides_DO_NOT_OVERRIDE) requires of an overridden standard test.
    @pytest.mark.skip(reason=_NO_INTERNET)
    @pytest.mark.xfail(reason=_NO_INTERNET)
    def test_image_inputs(self, model: BaseChatModel) -> None:
        super().test_image_inputs(model)


class TestChatOllamaUnitOnStandIn(ChatModelUnitTests):
    """The offline unit suite on ChatOllama configured for the stand-in.

    It needs no server; it is here because it pins the one known ChatOllama bug the router must
    work around (the LangSmith model name under a per-call ``model=`` override).
    """

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatOllama

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": MODEL, "base_url": _STANDIN["srv"].url}

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return OVERRIDE_MODEL

    @pytest.mark.xfail(
        reason="ChatOllama bug: _get_ls_params reports self.model, ignoring a per-call model=",
        strict=True,
    )
    def test_standard_params_model_override(self, model: BaseChatModel) -> None:
        super().test_standard_params_model_override(model)

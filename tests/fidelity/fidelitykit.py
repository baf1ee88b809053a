"""What the fidelity tests share: the cases' inputs, the target description, CI rules."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest

from langchain_contextharbor.testing import OllamaStandIn

#: The structured-output case: every client sends this schema as ``format``.
CAPITAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"capital": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["capital", "population"],
}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "the city"}},
        },
    },
}
#: Short, repeatable answers from either engine.
OPTIONS: dict[str, Any] = {"temperature": 0, "seed": 1, "num_predict": 24}


@dataclass(frozen=True)
class Target:
    """A running stand-in and what the cases need to know about its models."""

    engine: str
    srv: OllamaStandIn
    chat_model: str
    embed_model: str
    dims: int
    tools: bool

    @property
    def url(self) -> str:
        return self.srv.url


def missing_requirement(reason: str) -> NoReturn:
    """Skip locally, but fail in CI (``CI=true``), where the requirement is installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI installs it: scripts/ci_system_deps.sh)")
    pytest.skip(reason)

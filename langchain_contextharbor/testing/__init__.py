"""An Ollama stand-in for tests: a real loopback HTTP server speaking Ollama's API.

It exists so the router's failover can be tested against the failures real Ollama servers
have (refused connections, hangs, streams cut mid-way, 404/500/503 errors) without a GPU or
an Ollama binary, through the real ollama-python client and ChatOllama. See ``server`` for the
server, ``faults`` for what each fault does on the wire, ``engines`` for the scripted engine
and ``llama_engine`` for a real small model (SmolLM2 on llama.cpp).

Pytest fixtures (``ollama_standin``, ``ollama_standin_factory``, ...) come from
``langchain_contextharbor.testing.pytest_plugin``, registered as the ``contextharbor``
pytest plugin.
"""

from langchain_contextharbor.testing.engines import (
    ChatTurn,
    DoneEvent,
    Engine,
    EngineEvent,
    ScriptedEngine,
    TextToken,
    ThinkingToken,
    ToolCallEvent,
    ToolDecision,
)
from langchain_contextharbor.testing.faults import BUSY_MESSAGE, Fault, FaultRule, oom_message
from langchain_contextharbor.testing.llama_engine import (
    LlamaCppEngine,
    llama_cpp_available,
    smollm2_gguf_path,
)
from langchain_contextharbor.testing.models import LoadedModel, StandInModel
from langchain_contextharbor.testing.server import OllamaStandIn, RequestRecord, StandInConfig

__all__ = [
    "BUSY_MESSAGE",
    "ChatTurn",
    "DoneEvent",
    "Engine",
    "EngineEvent",
    "Fault",
    "FaultRule",
    "LlamaCppEngine",
    "LoadedModel",
    "OllamaStandIn",
    "RequestRecord",
    "ScriptedEngine",
    "StandInConfig",
    "StandInModel",
    "TextToken",
    "ThinkingToken",
    "ToolCallEvent",
    "ToolDecision",
    "llama_cpp_available",
    "oom_message",
    "smollm2_gguf_path",
]

"""Where the examples get their Ollama servers from (shared by every script here).

If an Ollama server answers at ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL`` (default
127.0.0.1:11434 and :11435; ``OLLAMA_HOST`` counts for the GPU one, as in the library), the
examples use it, with the model named in ``CONTEXTHARBOR_EXAMPLE_MODEL`` or else the first
one it lists that can chat: its ``/api/show`` ``capabilities`` include ``completion`` (and
``tools`` for the agent examples). An embedding model such as ``nomic-embed-text`` cannot
chat, and a server lists the model pulled last first. Otherwise they start two embedded
Ollama stand-ins on loopback (``langchain_contextharbor.testing``): a "gpu" and a "cpu"
server with the scripted engine, which answers, streams, calls tools and fills JSON schemas
without a real model. Every example prints which of the two it is using.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from langchain_contextharbor import BackendConfig, backends_from_env
from langchain_contextharbor.testing import OllamaStandIn

STANDIN_MODEL = "llama3.2:1b"


@dataclass
class Servers:
    model: str
    backends: list[BackendConfig] | None  # None: HybridChatOllama reads the environment
    live: bool
    live_url: str = ""  # the first real server that answered (live mode)
    standins: dict[str, OllamaStandIn] = field(default_factory=dict)


def answers(url: str) -> bool:
    """Whether an Ollama server answers at ``url``."""
    try:
        return httpx.get(f"{url.rstrip('/')}/api/version", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


MODEL_ENV = "CONTEXTHARBOR_EXAMPLE_MODEL"
"""The one variable every example and ``make demo`` read for the chat model to use."""


def live_urls() -> list[str]:
    """The servers HybridChatOllama would use (``OLLAMA_GPU_URL``, else ``OLLAMA_HOST``;
    ``OLLAMA_CPU_URL``) that answer now."""
    return [c.base_url for c in backends_from_env() if answers(c.base_url)]


def capabilities(url: str, model: str) -> list[str] | None:
    """``model``'s capabilities as ``/api/show`` reports them (``["completion", "tools"]``,
    ``["embedding"]``); None when the server does not say (Ollama before 0.6)."""
    try:
        show = httpx.post(f"{url.rstrip('/')}/api/show", json={"model": model}, timeout=5)
        caps = show.json().get("capabilities") if show.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return [str(c) for c in caps] if isinstance(caps, list) else None


def first_model(url: str, *, needs: tuple[str, ...] = ("completion",)) -> str | None:
    """The first model the server at ``url`` lists that has every capability in ``needs``
    (``()``: the first one). A server that reports no capabilities is trusted for any model
    whose name does not say ``embed``."""
    try:
        models = httpx.get(f"{url.rstrip('/')}/api/tags", timeout=2).json().get("models", [])
    except (httpx.HTTPError, ValueError):
        return None
    for name in (str(m["model"]) for m in models):
        if not needs:
            return name
        caps = capabilities(url, name)
        if caps is None and "embed" not in name:
            return name
        if caps is not None and all(c in caps for c in needs):
            return name
    return None


def chat_model(url: str, *, needs: tuple[str, ...] = ("completion",)) -> str | None:
    """``CONTEXTHARBOR_EXAMPLE_MODEL`` if set, else :func:`first_model` of ``url``."""
    return os.environ.get(MODEL_ENV) or first_model(url, needs=needs)


def _has_model(url: str, model: str) -> bool:
    try:
        models = httpx.get(f"{url.rstrip('/')}/api/tags", timeout=2).json().get("models", [])
    except (httpx.HTTPError, ValueError):
        return False
    names = {str(m["model"]) for m in models}
    return model in names or f"{model}:latest" in names


@contextlib.contextmanager
def servers(
    embed_model: str | None = None, *, needs: tuple[str, ...] = ("completion",)
) -> Iterator[Servers]:
    """Real Ollama if one answers, else two embedded stand-ins (stopped on exit).

    ``embed_model``: an embedding model the example needs too; real Ollama is used only
    when it has that model (``ollama pull nomic-embed-text``). ``needs``: the capabilities
    the chat model must have (``("completion", "tools")`` for an agent).
    """
    live = live_urls()
    model = chat_model(live[0], needs=needs) if live else None
    if live and not model:
        what = " and ".join(needs)
        print(
            f"Ollama at {live[0]} lists no model with {what} (/api/show capabilities): "
            f"`ollama pull {STANDIN_MODEL}`, or set {MODEL_ENV}"
        )
    if live and embed_model and not _has_model(live[0], embed_model):
        print(f"Ollama at {live[0]} has no {embed_model}: `ollama pull {embed_model}` to use it")
        live = []
    if live and model:
        print(f"Using real Ollama at {', '.join(live)} with model {model}")
        yield Servers(model=model, backends=None, live=True, live_url=live[0])
        return
    models = [STANDIN_MODEL, *([embed_model] if embed_model else [])]
    gpu = OllamaStandIn(name="gpu", models=models)
    cpu = OllamaStandIn(name="cpu", models=models, gpu_fraction=0.0)
    with gpu, cpu:
        print(
            f"No Ollama with a chat model answers: using two embedded stand-ins "
            f"({gpu.url}, {cpu.url})"
        )
        yield Servers(
            model=STANDIN_MODEL,
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url, kind="gpu"),
                BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
            ],
            live=False,
            standins={"gpu": gpu, "cpu": cpu},
        )

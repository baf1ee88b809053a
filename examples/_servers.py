"""Where the examples get their Ollama servers from (shared by every script here).

If an Ollama server answers at ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL`` (default
127.0.0.1:11434 and :11435; ``OLLAMA_HOST`` counts for the GPU one, as in the library), the
examples use it, with the model named in
``CONTEXTHARBOR_EXAMPLE_MODEL`` or else the first one it has. Otherwise they start two
embedded Ollama stand-ins on loopback (``langchain_contextharbor.testing``): a "gpu" and a
"cpu" server with the scripted engine, which answers, streams, calls tools and fills JSON
schemas without a real model. Every example prints which of the two it is using.
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


def first_model(url: str, *, skip: str | None = None) -> str | None:
    """The first model the server at ``url`` lists (names containing ``skip`` left out)."""
    try:
        models = httpx.get(f"{url.rstrip('/')}/api/tags", timeout=2).json().get("models", [])
    except (httpx.HTTPError, ValueError):
        return None
    names = [str(m["model"]) for m in models if not (skip and skip in str(m["model"]))]
    return names[0] if names else None


def _has_model(url: str, model: str) -> bool:
    try:
        models = httpx.get(f"{url.rstrip('/')}/api/tags", timeout=2).json().get("models", [])
    except (httpx.HTTPError, ValueError):
        return False
    names = {str(m["model"]) for m in models}
    return model in names or f"{model}:latest" in names


@contextlib.contextmanager
def servers(embed_model: str | None = None) -> Iterator[Servers]:
    """Real Ollama if one answers, else two embedded stand-ins (stopped on exit).

    ``embed_model``: an embedding model the example needs too; real Ollama is used only
    when it has that model (``ollama pull nomic-embed-text``).
    """
    # The servers HybridChatOllama would use: OLLAMA_GPU_URL (else OLLAMA_HOST), OLLAMA_CPU_URL.
    live = [c.base_url for c in backends_from_env() if answers(c.base_url)]
    model = os.environ.get("CONTEXTHARBOR_EXAMPLE_MODEL") or (live and first_model(live[0]))
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
            f"No Ollama with a model answers: using two embedded stand-ins ({gpu.url}, {cpu.url})"
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

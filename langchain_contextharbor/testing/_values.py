"""The stand-in's plain values: its settings and the entries of its request log.

Why a module of their own: the server, the endpoints, the exchange and the residency all
read these; kept apart from :mod:`.server`, none of those needs to import the server
(the package's import graph has no cycle). Both are re-exported by :mod:`.server` and by
:mod:`langchain_contextharbor.testing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_contextharbor.testing.engines import Engine
from langchain_contextharbor.testing.faults import Fault
from langchain_contextharbor.testing.models import DEFAULT_NUM_CTX, StandInModel

__all__ = ["RequestRecord", "StandInConfig"]


@dataclass
class StandInConfig:
    """Per-instance settings of an ``OllamaStandIn`` (all have usable defaults).

    ``gpu_fraction`` is the share of a loaded model's bytes reported as ``size_vram`` in
    ``/api/ps`` (1.0 = a GPU server, 0.0 = CPU-only). ``load_delay`` is paid by a chat whose
    model is not loaded (or needs a reload for another ``num_ctx``/``num_gpu``); ``token_delay``
    separates streamed chunks. ``num_parallel`` requests generate at once; up to ``max_queue``
    more wait for a slot and any beyond get Ollama's 503. ``keep_alive`` (seconds, negative =
    forever) is the default residency after a request. ``hang_cap`` bounds every injected hang
    so nothing can block forever. ``available_memory`` is the "available" figure of the OOM
    fault's text (0 = a third of what the model needs). ``max_log`` bounds the request log
    (oldest entries are dropped), so a long-running CLI instance does not grow without end.

    ``version`` is what ``/api/version`` advertises, and the one switch between the two ways
    Ollama frames an error met before a stream's first chunk: from 0.12.6 (the default
    0.14.3) a plain JSON error (``500 {"error": ...}``), in 0.12.0-0.12.5 HTTP 200 and one
    ``{"error": ...}`` NDJSON line (``version="0.12.5"`` reproduces that). The same switch
    drops what older versions did not send: a tool call's ``id`` before 0.12.10, its
    ``index`` 0 before 0.12.6, ``logprobs`` before 0.12.11. ``catalogue`` is
    what ``/api/pull`` can fetch (``None``: :data:`~.models.CATALOGUE`, the well-known
    models; a list: only those). ``origins`` plays ``OLLAMA_ORIGINS``: extra browser origins
    (wildcards allowed) let past the CORS check, which refuses any other ``Origin`` with 403.
    Bound to loopback, the stand-in also refuses a ``Host`` that is not local with 403.
    """

    name: str = "ollama"
    host: str = "127.0.0.1"
    port: int = 0
    version: str = "0.14.3"
    models: list[StandInModel | str] = field(default_factory=lambda: ["llama3.2:1b"])
    loaded: list[str] = field(default_factory=list)
    gpu_fraction: float = 1.0
    load_delay: float = 0.0
    token_delay: float = 0.0
    num_parallel: int = 1
    max_queue: int = 512
    keep_alive: float = 300.0
    num_ctx: int = DEFAULT_NUM_CTX
    hang_cap: float = 60.0
    available_memory: int = 0
    max_log: int = 10_000
    engine: Engine | None = None
    catalogue: list[StandInModel | str] | None = None
    origins: list[str] = field(default_factory=list)


@dataclass
class RequestRecord:
    """One request as the stand-in saw it (``srv.requests``).

    ``body`` is the parsed JSON body (``None`` when absent or not JSON). ``status`` is the
    HTTP status sent, or ``None`` while the request is still running or when no status line
    was ever sent (a hang or a cut before headers). ``fault`` is the injected fault that this
    request consumed, if any. ``timestamp`` is ``time.time()`` at arrival.
    """

    method: str
    path: str
    body: Any
    timestamp: float
    instance: str
    status: int | None = None
    fault: Fault | None = None

    @property
    def model(self) -> str | None:
        """The ``model`` field of the body, when there is one."""
        if isinstance(self.body, dict):
            value = self.body.get("model") or self.body.get("name")
            return value if isinstance(value, str) else None
        return None

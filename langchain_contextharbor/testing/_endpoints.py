"""The endpoint handlers of the stand-in: what each Ollama route answers.

Each is a function of the stand-in (its models, residency, slots, engine) and one exchange.
Loading, ``keep_alive``, ``num_parallel`` queueing, stop sequences, ``num_predict`` and the
NDJSON chunk shapes live in the handler modules gathered here (``_endpoints_listing``,
``_endpoints_models``, ``_endpoints_embed``, ``_endpoints_generate``, over what they share in
``_endpoints_base``); the wire and fault timing live in :mod:`._exchange`. This module is
the route table and keeps the names the server imports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_contextharbor.testing._endpoints_base import Blob, StandIn
from langchain_contextharbor.testing._endpoints_embed import _h_api_embed, _h_api_embeddings
from langchain_contextharbor.testing._endpoints_generate import (
    _h_api_chat,
    _h_api_generate,
    scripted_logprob,
)
from langchain_contextharbor.testing._endpoints_listing import (
    _h_api_ps,
    _h_api_show,
    _h_api_tags,
    _h_api_version,
    _h_root,
)
from langchain_contextharbor.testing._endpoints_models import (
    BLOB_METHODS,
    BLOBS_PREFIX,
    _h_api_copy,
    _h_api_create,
    _h_api_delete,
    _h_api_pull,
    blob_endpoint,
)
from langchain_contextharbor.testing._exchange import _Exchange

__all__ = [
    "BLOBS_PREFIX",
    "BLOB_METHODS",
    "ENDPOINTS",
    "Blob",
    "StandIn",
    "blob_endpoint",
    "scripted_logprob",
]


#: Path -> handler; ``StandIn`` dispatches here after method and body checks.
ENDPOINTS: dict[str, Callable[[StandIn, _Exchange, dict[str, Any]], None]] = {
    "/": _h_root,
    "/api/version": _h_api_version,
    "/api/tags": _h_api_tags,
    "/api/ps": _h_api_ps,
    "/api/show": _h_api_show,
    "/api/delete": _h_api_delete,
    "/api/copy": _h_api_copy,
    "/api/pull": _h_api_pull,
    "/api/create": _h_api_create,
    "/api/embed": _h_api_embed,
    "/api/embeddings": _h_api_embeddings,
    "/api/chat": _h_api_chat,
    "/api/generate": _h_api_generate,
}

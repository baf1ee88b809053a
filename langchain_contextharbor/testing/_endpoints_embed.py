"""The stand-in's embedding routes: ``/api/embed`` and the legacy ``/api/embeddings``,
with context fitting (``truncate``). Gathered into the route table by :mod:`._endpoints`.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_contextharbor.testing._endpoints_base import (
    StandIn,
    _use_model,
)
from langchain_contextharbor.testing._exchange import _Exchange
from langchain_contextharbor.testing._requests import (
    _validate_options,
    parse_keep_alive,
)
from langchain_contextharbor.testing._wire import _RequestError
from langchain_contextharbor.testing.engines import (
    EmbeddingNotSupported,
    ScriptedEngine,
    normalize,
)

_SCRIPTED = ScriptedEngine()


def _h_api_embed(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    _embed(srv, ex, body, legacy=False)


def _h_api_embeddings(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    _embed(srv, ex, body, legacy=True)


def _embed(srv: StandIn, ex: _Exchange, body: dict[str, Any], *, legacy: bool) -> None:
    t0 = time.perf_counter_ns()
    model = body.get("model")
    raw_input = body.get("prompt", "") if legacy else body.get("input")
    # EmbedHandler reads the input before it looks the model up. An empty string, like
    # no input at all, is no input: 200 with "embeddings": [] (0.14.3), not one vector.
    if raw_input is None or isinstance(raw_input, str):
        texts = [raw_input] if raw_input else []
    elif isinstance(raw_input, list) and all(isinstance(t, str) for t in raw_input):
        texts = list(raw_input)
    else:
        raise _RequestError(400, "invalid input type")
    if not isinstance(model, str) or not model:
        raise _RequestError(400, "model is required")
    spec = srv.get_model(model)
    if spec is None:
        raise _RequestError(404, f'model "{model}" not found, try pulling it first')
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    options = _validate_options(body.get("options"))
    dims = body.get("dimensions")
    want = dims if isinstance(dims, int) and not isinstance(dims, bool) and dims > 0 else 0
    embedder = getattr(srv.engine, "embed", None)
    if not callable(embedder):
        embedder = _SCRIPTED.embed
    with _use_model(srv, ex, spec, options, keep_alive) as load_ns:
        if not texts:
            if legacy:
                ex.send_json(200, {"embedding": []})
            else:
                ex.send_json(200, {"model": model, "embeddings": []})
            return
        limit = min(int(options.get("num_ctx") or srv.config.num_ctx), spec.context_length)
        truncate = body.get("truncate") is not False
        texts, prompt_tokens = _fit_context(texts, limit, truncate=truncate)
        try:
            vectors = [list(v) for v in embedder(spec, texts)]
        except EmbeddingNotSupported:
            # What Ollama's runner answers for a model without pooling (a chat
            # model); the legacy endpoint turns every runner error into a 500.
            raise _RequestError(
                500 if legacy else 501, "this model does not support embeddings"
            ) from None
    if want:  # Ollama truncates to `dimensions` and normalises again
        vectors = [normalize(v[:want]) if want < len(v) else v for v in vectors]
    if legacy:
        ex.send_json(200, {"embedding": vectors[0] if vectors else []})
        return
    out: dict[str, Any] = {"model": model, "embeddings": vectors}
    out["total_duration"] = time.perf_counter_ns() - t0
    out["load_duration"] = load_ns
    if prompt_tokens:
        out["prompt_eval_count"] = prompt_tokens
    ex.send_json(200, out)


def _fit_context(texts: list[str], limit: int, *, truncate: bool) -> tuple[list[str], int]:
    """Each input cut to ``limit`` tokens (words, the scripted engine's tokens), as
    EmbedHandler retries an input the runner found too long; with ``truncate: false`` the
    runner's 400 instead. Returns the inputs and the tokens they count."""
    out: list[str] = []
    total = 0
    for text in texts:
        words = text.split()
        if len(words) > limit:
            if not truncate:
                raise _RequestError(400, "the input length exceeds the context length")
            words = words[:limit]
            text = " ".join(words)
        out.append(text)
        total += len(words)
    return out, total

"""The stand-in's read-only routes: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps``,
``/api/show``. Gathered into the route table by :mod:`._endpoints`.
"""

from __future__ import annotations

from typing import Any

from langchain_contextharbor.testing._endpoints_base import (
    StandIn,
)
from langchain_contextharbor.testing._exchange import _Exchange
from langchain_contextharbor.testing._wire import _RequestError


def _h_root(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    ex.send(200, "text/plain; charset=utf-8", b"Ollama is running")


def _h_api_version(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    ex.send_json(200, {"version": srv.config.version})


def _h_api_tags(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    models = sorted(srv.models, key=lambda m: m.modified_at_ns, reverse=True)
    ex.send_json(200, {"models": [m.tags_entry() for m in models]})


def _h_api_ps(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    loaded = sorted(srv.loaded, key=lambda lm: lm.expires_at_ns, reverse=True)
    ex.send_json(200, {"models": [lm.ps_entry() for lm in loaded]})


def _h_api_show(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise _RequestError(400, "model is required")
    spec = srv.get_model(name)
    if spec is None:
        raise _RequestError(404, f"model '{name}' not found")
    ex.send_json(200, spec.show_response())

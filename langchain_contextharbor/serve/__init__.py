"""``contextharbor serve``: the router as an Ollama- and OpenAI-compatible HTTP endpoint.

Why: the router lived inside one Python process, so a chat UI, an editor assistant or the
``ollama`` CLI on the same machine could not use it, and each Python app routed blind to the
others' load. The proxy is a thin edge over the *same* router the library uses (a
:class:`~langchain_contextharbor.HybridChatOllama` hosts it: plans, admission leases,
breakers, failover with the commit gate, timeouts, embeddings digest safety, fleet mode
through ``shared_state``); the client's request body goes to the chosen backend unchanged
and the backend's bytes come back unchanged (:mod:`._forward`). Needs the ``serve`` extra
(``pip install 'langchain-contextharbor[serve]'``: starlette and uvicorn).

Run: ``contextharbor serve`` (or ``python -m langchain_contextharbor.serve``), 127.0.0.1:11400
by default; docs/serve.md has the recipes.

The status page's contract
--------------------------
:func:`create_app` includes ``langchain_contextharbor.serve.status.routes(app_state)``
(a sequence of starlette routes, placed before the proxy's own, so it may take ``/``) when
that module exists. ``app_state`` is an :class:`~._forward.AppState` (also at
``app.state.contextharbor``) with:

- ``router``: the :class:`~langchain_contextharbor._router.Router` (``stats()``,
  ``backends``, probes, breakers, learned speeds);
- ``llm``: the ``HybridChatOllama`` that hosts it; ``configs``: the ``BackendConfig`` list
  (use ``safe_url``, never ``base_url``); ``settings``: the :class:`ServeConfig`;
- ``decisions``: a bounded ``collections.deque`` of dicts, newest last, one per proxied
  request (chat, generate, embed, OpenAI), each with ``time`` (epoch seconds),
  ``endpoint``, ``model``, ``backend`` (None when every backend failed), ``reasons`` (the
  plan's reasons for that backend), ``attempts`` (failed attempts, as
  ``AttemptRecord.as_dict()``), ``skipped``, ``status`` and, on failure, ``error``;
- ``started``: when the app was made (epoch seconds).

API keys guard every path (the status page too) except ``HEAD /``.
"""

from langchain_contextharbor.serve._cli import add_serve_parser, run_serve

__all__ = ["add_serve_parser", "run_serve"]


def __getattr__(name: str) -> object:
    """``create_app``, ``ServeConfig`` and ``AppState`` on first use: they import starlette,
    an optional extra, which the CLI's parser must not need."""
    if name in ("create_app", "ServeConfig", "DEFAULT_PORT", "DEFAULT_MAX_BODY"):
        from langchain_contextharbor.serve import _app

        return getattr(_app, name)
    if name == "AppState":
        from langchain_contextharbor.serve._forward import AppState

        return AppState
    raise AttributeError(name)

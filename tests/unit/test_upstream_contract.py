"""Private upstream names HybridChatOllama relies on.

The failover loops call ChatOllama's private ``_iterate_over_stream`` /
``_aiterate_over_stream`` (the chunk stream without langchain-core's callback layer, so
the router decides what the caller sees). When a langchain-ollama upgrade renames or
reshapes them, this test names exactly what broke.
"""

from __future__ import annotations

import inspect

from langchain_ollama import ChatOllama


def test_chatollama_private_stream_methods_exist_with_expected_shape() -> None:
    for name, is_async in (("_iterate_over_stream", False), ("_aiterate_over_stream", True)):
        fn = getattr(ChatOllama, name, None)
        assert fn is not None, f"ChatOllama.{name} is gone: update chat_models._routed_stream"
        if is_async:
            assert inspect.isasyncgenfunction(fn), f"ChatOllama.{name} is no async generator"
        else:
            assert inspect.isgeneratorfunction(fn), f"ChatOllama.{name} is no generator"
        params = list(inspect.signature(fn).parameters)
        assert params[:3] == ["self", "messages", "stop"], (name, params)
        assert any(
            p.kind is inspect.Parameter.VAR_KEYWORD
            for p in inspect.signature(fn).parameters.values()
        ), f"ChatOllama.{name} no longer takes **kwargs (options, tools, format)"

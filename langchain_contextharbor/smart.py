"""``smart_chat``: the original design's one-call helper, on top of HybridChatOllama.

Why keep it: code written for the original ``hybrid_router.smart_chat(model, messages)``
should move over by changing an import. Unlike the original it returns a LangChain
``AIMessage`` (``response_metadata["backend"]`` names the server that answered) and it
gets the router's size/VRAM routing, breakers and invisible failover.

The one default instance:
    ``smart_chat`` uses a single :class:`HybridChatOllama` per process, built from
    ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL`` on first use and reused by every later call,
    whatever the model: the model is passed per call (``model=``), so routing state
    (probes, circuit breakers, counters) is shared by all calls, as it should be for the
    same servers. This module-level instance exists only for this helper; code that
    needs its own settings should create its own ``HybridChatOllama``.
    :func:`get_default_model` returns it (``.stats()``, ``.select_backend(...)``);
    :func:`reset_default_model` closes it so the next call rebuilds it from the
    environment as it is then.

Streaming: :func:`smart_chat_stream` (sync) and :func:`asmart_chat_stream` (async) take the
same arguments and yield the answer's text as it arrives, for a web page that shows tokens
as they come (``examples/web_app.py`` sends them over SSE). They stream through the same
instance and router, so a server that fails before its first token is replaced invisibly,
and one that fails mid-answer is either resumed elsewhere without repeating text or ends the
stream with ``StreamInterruptedError`` (the chat model's rule: never duplicated text).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, BaseMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool

from langchain_contextharbor.chat_models import HybridChatOllama

__all__ = [
    "asmart_chat_stream",
    "get_default_model",
    "reset_default_model",
    "smart_chat",
    "smart_chat_stream",
]

logger = logging.getLogger("langchain_contextharbor")

#: Only the instance's fallback model: every ``smart_chat`` call names its own model.
_PLACEHOLDER_MODEL = "llama3.2"

_default: HybridChatOllama | None = None
_lock = threading.Lock()

MessageLike = BaseMessage | dict[str, Any] | str | tuple[str, str]
ToolLike = dict[str, Any] | type | Callable[..., Any] | BaseTool


def get_default_model(model: str | None = None) -> HybridChatOllama:
    """The process-wide HybridChatOllama behind :func:`smart_chat` (created on first use).

    ``model`` only sets the instance's own default model when it is created here (calls
    through ``smart_chat`` always name theirs). Configuration errors in
    ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL`` raise ``ConfigurationError`` here, and a later
    call tries again.
    """
    global _default
    llm = _default
    if llm is not None:
        return llm
    with _lock:
        if _default is None:
            _default = HybridChatOllama(model=model or _PLACEHOLDER_MODEL)
        return _default


def reset_default_model() -> None:
    """Close and forget the default instance; the next call builds a new one from env."""
    global _default
    with _lock:
        llm, _default = _default, None
    if llm is not None:
        llm.close()


def _messages(messages: Sequence[MessageLike] | MessageLike) -> list[MessageLike] | str:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, (BaseMessage, dict)):
        return [messages]
    items = list(messages)
    if not items:
        raise ValueError("messages must not be empty")
    return items


def _prepare(
    model: str,
    messages: Sequence[MessageLike] | MessageLike,
    tools: Sequence[ToolLike] | None,
    intent: str | None,
) -> tuple[Runnable[LanguageModelInput, BaseMessage], list[MessageLike] | str]:
    """The checks and the runnable every form of ``smart_chat`` starts with."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must be a non-empty model tag, e.g. 'llama3.1:8b'")
    if intent is not None:
        logger.debug("smart_chat: intent=%r ignored (routing is by size and free memory)", intent)
    llm = get_default_model(model)
    runnable = llm.bind_tools(list(tools)) if tools else llm
    return runnable, _messages(messages)


def _text(chunk: BaseMessage) -> str:
    """A chunk's text (content blocks joined; tool-call and thinking chunks carry none)."""
    content = chunk.content
    if isinstance(content, str):
        return content
    return "".join(
        b if isinstance(b, str) else str(b.get("text", ""))
        for b in content
        if isinstance(b, str) or b.get("type") == "text"
    )


async def smart_chat(
    model: str,
    messages: Sequence[MessageLike] | MessageLike,
    tools: Sequence[ToolLike] | None = None,
    *,
    intent: str | None = None,
    config: RunnableConfig | None = None,
    **kwargs: Any,
) -> AIMessage:
    """Send one chat to the best Ollama server for ``model``; fail over if it fails.

    ``messages``: dicts like the original's ``{"role": "user", "content": "..."}`` (also
    ``"system"``, ``"assistant"``, ``"tool"``), LangChain messages, or a plain string.
    ``tools``: anything ``bind_tools`` takes (functions, ``@tool``\\ s, pydantic classes,
    OpenAI/Ollama tool dicts); the answer's ``tool_calls`` holds the calls.
    ``**kwargs`` are per-call options of ChatOllama (``options={"num_ctx": 8192}``,
    ``keep_alive="10m"``, ``format="json"``, ...). ``config`` is a LangChain
    ``RunnableConfig`` (callbacks, tags). ``intent`` ("fast"/"heavy") is accepted so
    original callers keep working and is otherwise ignored: routing now follows the
    model's size and the free memory instead of a caller's guess.

    Returns the ``AIMessage``; ``response_metadata["backend"]`` is the server's name and
    ``response_metadata["contextharbor"]`` the routing details. Raises
    ``AllBackendsFailedError`` (or a subclass) when no server could answer.
    """
    runnable, msgs = _prepare(model, messages, tools, intent)
    answer = await runnable.ainvoke(msgs, config, model=model, **kwargs)
    if not isinstance(answer, AIMessage):  # pragma: no cover - a chat model returns one
        raise TypeError(f"expected an AIMessage, got {type(answer).__name__}")
    return answer


def smart_chat_stream(
    model: str,
    messages: Sequence[MessageLike] | MessageLike,
    tools: Sequence[ToolLike] | None = None,
    *,
    intent: str | None = None,
    config: RunnableConfig | None = None,
    **kwargs: Any,
) -> Iterator[str]:
    """:func:`smart_chat`, streamed: yields the answer's text chunks as they arrive.

    Same arguments, same default instance and routing. Empty chunks (the final one, a
    tool-call chunk) are not yielded; use ``get_default_model().stream(...)`` for the
    chunks themselves (tool calls, ``response_metadata``). Failover before the first token
    is invisible; a failure after it resumes on another server without repeating text or
    raises ``StreamInterruptedError``. Raises ``AllBackendsFailedError`` (or a subclass)
    when no server could answer. The sync form, for threads and WSGI apps; the async twin
    is :func:`asmart_chat_stream`."""
    runnable, msgs = _prepare(model, messages, tools, intent)
    for chunk in runnable.stream(msgs, config, model=model, **kwargs):
        if isinstance(chunk, BaseMessageChunk) and (text := _text(chunk)):
            yield text


async def asmart_chat_stream(
    model: str,
    messages: Sequence[MessageLike] | MessageLike,
    tools: Sequence[ToolLike] | None = None,
    *,
    intent: str | None = None,
    config: RunnableConfig | None = None,
    **kwargs: Any,
) -> AsyncIterator[str]:
    """The async twin of :func:`smart_chat_stream` (for ASGI apps: never blocks the loop)."""
    runnable, msgs = _prepare(model, messages, tools, intent)
    async for chunk in runnable.astream(msgs, config, model=model, **kwargs):
        if isinstance(chunk, BaseMessageChunk) and (text := _text(chunk)):
            yield text

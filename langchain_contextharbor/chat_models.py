"""HybridChatOllama: one LangChain chat model over several Ollama servers.

Why a chat model and not ``gpu.with_fallbacks([cpu])``: ``RunnableWithFallbacks`` works in
``create_agent``, but it is not a ``BaseChatModel`` for code that checks, it sends every call
to a failing server first again, it has no idea which server should take a model, and a
stream that fails after its first chunk raises a raw transport error
(``tests/docs/test_with_fallbacks_facts.py`` shows each point). This class is a real
``BaseChatModel`` that wraps one ``ChatOllama`` per backend, plans every call with the
pure router (:mod:`langchain_contextharbor.routing`) and fails over inside the call.

This module is its LangChain surface; the rest lives by responsibility: its fields in
:mod:`._chat_fields`, the call path (hot state, inner models, planning, the failover loops)
in :mod:`._chat_calls`, one attempt's per-chunk decisions in :mod:`._attempt`, what
``bind_tools``/``with_structured_output`` bind in :mod:`._structured`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import ChatPromptValue, PromptValue
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.utils import LC_ID_PREFIX
from langchain_ollama import ChatOllama
from pydantic import BaseModel, model_validator

from langchain_contextharbor._attempt import _Abandoned, _to_result
from langchain_contextharbor._chat_calls import RoutedCalls, _HotState
from langchain_contextharbor._config import check_side_kwargs
from langchain_contextharbor._failover import _Call
from langchain_contextharbor._router import Router
from langchain_contextharbor._structured import Method, structured_output, tools_for_choice
from langchain_contextharbor._transport import MaskedClientKwargs
from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.errors import ConfigurationError, at_init
from langchain_contextharbor.fleet import make_shared_state
from langchain_contextharbor.routing import RoutePlan
from langchain_contextharbor.sizing import DEFAULT_NUM_CTX

__all__ = ["ABANDONED_EVENT", "HybridChatOllama"]

logger = logging.getLogger("langchain_contextharbor")


ABANDONED_EVENT = "contextharbor_abandoned"
"""Name of the custom event an ``invoke`` fires when a backend died after some of its
tokens reached ``on_llm_new_token`` observers and the call moved on to another backend.
Its data: ``{"backend", "chunks", "chars", "error_class"}``; observers discard the tokens
of that run seen so far. The replacement's first chunk carries the same facts in
``response_metadata["contextharbor"]["abandoned"]``."""


class _InnerChatOllama(MaskedClientKwargs, ChatOllama):
    """The ChatOllama of one backend (client kwargs masked in reprs and dumps)."""


@dataclass(frozen=True)
class SelectedBackend:
    """One backend as ``_select_backend`` names it (the URL without credentials)."""

    name: str
    url: str
    kind: str


class HybridChatOllama(RoutedCalls, BaseChatModel):
    """Chat model that routes each call to the best of several Ollama servers.

    Setup:
        Run two Ollama servers, a GPU one on ``127.0.0.1:11434`` and a CPU-only one on
        ``127.0.0.1:11435`` (see ``scripts/setup_hybrid_ollama.sh``), then install the
        package from a checkout (``pip install .``) or a built wheel; it is not on PyPI yet.

    Key init args:
        model: the Ollama model tag (``"llama3.1:8b"``).
        backends: explicit list of :class:`BackendConfig` (or dicts). Default: from
            ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL``; an empty value disables one.
        temperature, num_ctx, num_predict/max_tokens, keep_alive, reasoning, format, stop,
        seed, ...: every ChatOllama parameter, applied on every backend.
        size_threshold_gb: models above this go CPU first when GPU capacity is unknown.
        timeouts / timeout: connect, first-token, idle and probe timeouts.

    Instantiate:
        .. code-block:: python

            from langchain_contextharbor import HybridChatOllama

            llm = HybridChatOllama(model="llama3.1:8b", temperature=0)

    Invoke / stream / async:
        .. code-block:: python

            llm.invoke("Why is the sky blue?").response_metadata["backend"]  # "gpu"
            for chunk in llm.stream("Tell me a story"):
                print(chunk.content, end="")
            await llm.ainvoke("hi")

    Tool calling and structured output:
        .. code-block:: python

            llm.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls
            llm.with_structured_output(Joke).invoke("Tell me a joke")

    Routing and failover:
        ``llm.select_backend()`` returns the :class:`RoutePlan` with the reason for each
        position. A failed backend (refused, hung, 5xx, out of memory, 404) is left for the
        next one invisibly — in a stream too, as long as nothing reached the caller yet —
        and its circuit breaker keeps later calls off it until a trial call.
    """

    _inner_class = _InnerChatOllama

    # Fields, each documented where it is declared: those shared with
    # HybridOllamaEmbeddings (model, backends, gpu_url, cpu_url, base_url, num_ctx, num_gpu,
    # num_thread, timeout, timeouts, size_threshold_gb, model_sizes, prefer_warm, spillover,
    # breaker, probe_ttl, background_probes, clock, nvml, host_memory) in _config.RoutedFields;
    # ChatOllama's parameters (temperature, num_predict, stop, ...) and the chat-only routing
    # knobs (max_retries, background_trials, warm_first_token_timeout, ...) in
    # _chat_fields.ChatFields. The call path (hot state, inner models, planning, the call
    # loops) is _chat_calls.RoutedCalls.

    # ------------------------------------------------------------------ construction
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # RoutedFields: one ConfigurationError, inputs hidden
        if self.validate_model_on_init:
            self._validate_model()

    def _validate_model(self) -> None:
        """ChatOllama's ``validate_model_on_init``, over every backend: probe them all now
        and raise the typed error a call would raise when none can serve the model."""
        self.refresh()
        num_ctx = self.num_ctx or DEFAULT_NUM_CTX
        plan = self._plan(self.model, num_ctx)
        if not plan.candidates:
            self.close()
            # A ValueError too, as ChatOllama's validate_model raises (errors.at_init).
            raise at_init(self._all_failed(_Call(self.model, num_ctx, plan)))

    @model_validator(mode="after")
    def _setup(self) -> HybridChatOllama:
        self._check_fields("llama3.1:8b")
        check_side_kwargs("sync_client_kwargs", self.sync_client_kwargs)
        check_side_kwargs("async_client_kwargs", self.async_client_kwargs)
        configs = self._resolve_backends(client_kwargs=self.client_kwargs)
        settings = self._router_settings(
            oom_cooldown=self.oom_cooldown,
            first_probe_wait=self.first_probe_wait,
            warm_first_token_timeout=self.warm_first_token_timeout,
            background_trials=self.background_trials,
            calibrate_speeds=self.calibrate_speeds,
        )
        if self.max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0")
        if self.max_tokens is not None and self.num_predict is None:
            self.num_predict = self.max_tokens
        shared = make_shared_state(
            self.shared_state,
            [c.name for c in configs],
            max_parallel={c.name: c.max_parallel for c in configs},
        )
        self._hot = _HotState(configs, self._new_router(configs, settings, shared), id(self))
        return self

    @property
    def backend_configs(self) -> list[BackendConfig]:
        """The resolved backends, in configuration order."""
        return list(self._h.configs)

    @property
    def router(self) -> Router:
        """The router (probes, breakers, learned speeds) this model plans with; hand it to
        ``HybridOllamaEmbeddings.from_chat_model`` to share it with a retriever."""
        return self._h.router

    # ------------------------------------------------------------------ identity
    @property
    def _llm_type(self) -> str:
        return "hybrid-chat-ollama"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        h = self._h
        ident = h.ident
        if ident is None:
            ident = h.ident = {
                "model": self.model,
                "backends": [f"{c.name}={c.safe_url}" for c in h.configs],
                **self._inner_params(),
            }
        return {**ident, "backends": list(ident["backends"])}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="ollama",
            ls_model_name=str(kwargs.get("model") or self.model),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("num_predict", self.num_predict)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if ls_stop := stop or self.stop:
            params["ls_stop"] = ls_stop
        return params

    def _convert_input(self, model_input: LanguageModelInput) -> PromptValue:
        """LangChain's conversion, refusing an empty message list before anything is sent.

        Why here: every entry point (``invoke``, ``stream``, ``batch`` and their async
        twins) converts its input through this one method. Sent on, ``[]`` reaches Ollama
        as a chat without messages, which only loads the model and answers nothing
        (``done_reason='load'``), so the caller got an ``EmptyResponseError`` about the
        answer instead of being told the request was empty. A string (most calls) costs
        one class comparison; ``isinstance`` on a pydantic class is slower."""
        value = super()._convert_input(model_input)
        if (
            model_input.__class__ is not str
            and isinstance(value, ChatPromptValue)
            and not value.messages
        ):
            raise ValueError(
                f"{type(self).__name__} was given no messages: pass a string or a non-empty "
                "list of messages (nothing was sent)"
            )
        return value

    # ------------------------------------------------------------------ routing
    def select_backend(self, model: str | None = None, **request: Any) -> RoutePlan:
        """The ordered candidates for a call, with the reason for each position.

        ``request`` takes what a call would: ``num_ctx=``, ``options={"num_ctx": ...}``.
        Planned over the router's current knowledge, with the same steps as a call: it
        schedules a stale probe and waits only for the first probes of a fresh instance
        (at most ``first_probe_wait``; call :meth:`refresh` first to plan on fresh data).
        """
        if "num_ctx" in request:
            request = {
                **request,
                "options": {**request.get("options", {}), "num_ctx": request.pop("num_ctx")},
            }
        return self._plan(model or self.model, self._num_ctx(request))

    def _select_backend(
        self, name: str | None = None
    ) -> tuple[SelectedBackend | None, SelectedBackend | None]:
        """The design's ``(primary, fallback)`` pair: backends with ``.name``, ``.url``
        (credentials removed) and ``.kind``; ``select_backend()`` has the full plan."""
        plan = self.select_backend(name)
        by_name = {c.name: c for c in self._h.configs}

        def pick(n: str | None) -> SelectedBackend | None:
            c = by_name.get(n or "")
            return None if c is None else SelectedBackend(c.name, c.safe_url, c.kind)

        return pick(plan.primary), pick(plan.fallback)

    def refresh(self, model: str | None = None) -> dict[str, Any]:
        """Probe every backend now and wait (shares a probe already running).

        What the probes prove is applied at once: a backend whose circuit is open and that
        answers gets its trial call on the next call, and a model its ``/api/tags`` lists
        is no longer remembered as missing there (after an ``ollama pull``)."""
        return self._h.router.refresh(model or self.model)

    def reset(self, backend: str | None = None) -> None:
        """Forget what was learned from failures, on one backend or (None) all of them:
        open circuits and their backoff, remembered 404s, out-of-memory marks, a failed
        probe. Use it after fixing a server by hand; routing starts from fresh facts."""
        names = [c.name for c in self._h.configs]
        if backend is not None and backend not in names:
            raise ConfigurationError(f"no backend named {backend!r}; configured: {names}")
        self._h.router.reset(backend)

    async def arefresh(self, model: str | None = None) -> dict[str, Any]:
        return await self._h.router.arefresh(model or self.model)

    def stats(self) -> dict[str, Any]:
        """Per-backend counters: requests, successes, failures by class, fallbacks,
        circuit state, in-flight, latency and time-to-first-token summaries."""
        return self._h.router.stats()

    def close(self) -> None:
        """Stop the probe threads and close the probe clients and the inner chat clients.

        The model stays usable: a later call builds what it needs again. Async clients
        are closed by their event loop when it shuts down (``asyncio.run`` does that);
        inside a running loop, ``await llm.aclose()`` closes that loop's clients now.
        """
        h = self._h
        h.router.close()
        h.pool.close()

    async def aclose(self) -> None:
        """:meth:`close`, plus the async clients of the running event loop."""
        self.close()
        await self._h.pool.aclose()

    # ------------------------------------------------------------------ sync
    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> bool:
        """Keep ``invoke`` on :meth:`_generate` even under a streaming observer.

        langchain-core asks this with a ``run_manager`` only from ``invoke``/``generate``
        (``stream()`` asks without one). Its streaming branch would concatenate every chunk
        ``_stream`` yields, so a failover after the first token would splice two answers;
        :meth:`_generate` fires ``on_llm_new_token`` itself and can still fail over.
        """
        if run_manager is not None:
            return False
        return super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        final: ChatGenerationChunk | None = None
        notify = run_manager is not None and bool(run_manager.handlers)
        run_id = f"{LC_ID_PREFIX}-{run_manager.run_id}" if run_manager is not None else None
        for item in self._routed_stream(messages, stop, gate=False, **kwargs):
            if type(item) is _Abandoned:
                final = None
                if notify:
                    assert run_manager is not None
                    CallbackManager(
                        run_manager.handlers,
                        parent_run_id=run_manager.parent_run_id,
                        tags=run_manager.tags,
                        metadata=run_manager.metadata,
                    ).on_custom_event(ABANDONED_EVENT, item.data, run_id=run_manager.run_id)
                continue
            chunk: ChatGenerationChunk = item  # type: ignore[assignment]
            if notify:
                assert run_manager is not None
                if chunk.message.id is None:
                    chunk.message.id = run_id
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            final = chunk if final is None else final + chunk
        assert final is not None
        return _to_result(final, run_id)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # langchain-core calls on_llm_new_token for every chunk _stream yields; emitting it
        # here as well would hand every callback each token twice (ChatOllama does).
        return cast(
            Iterator[ChatGenerationChunk],
            self._routed_stream(messages, stop, gate=True, **kwargs),
        )

    # ------------------------------------------------------------------ async
    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        final: ChatGenerationChunk | None = None
        notify = run_manager is not None and bool(run_manager.handlers)
        run_id = f"{LC_ID_PREFIX}-{run_manager.run_id}" if run_manager is not None else None
        async for item in self._arouted_stream(messages, stop, gate=False, **kwargs):
            if type(item) is _Abandoned:
                final = None
                if notify:
                    assert run_manager is not None
                    await AsyncCallbackManager(
                        run_manager.handlers,
                        parent_run_id=run_manager.parent_run_id,
                        tags=run_manager.tags,
                        metadata=run_manager.metadata,
                    ).on_custom_event(ABANDONED_EVENT, item.data, run_id=run_manager.run_id)
                continue
            chunk: ChatGenerationChunk = item  # type: ignore[assignment]
            if notify:
                assert run_manager is not None
                if chunk.message.id is None:
                    chunk.message.id = run_id
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            final = chunk if final is None else final + chunk
        assert final is not None
        return _to_result(final, run_id)

    def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The routed stream itself, not a generator re-yielding it (one hop less per chunk);
        # with gate=True it never yields an _Abandoned marker.
        return cast(
            AsyncIterator[ChatGenerationChunk],
            self._arouted_stream(messages, stop, gate=True, **kwargs),
        )

    # ------------------------------------------------------------------ tools & structure
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools, converted once and sent unchanged to whichever backend serves.

        Ollama has no ``tool_choice``; it is honoured as far as the protocol allows:
        ``"none"`` sends no tools, a tool name (or ``{"function": {"name": ...}}``) sends
        only that tool, ``"auto"``/``"any"``/``"required"``/``True`` send them all.
        """
        return super().bind(tools=tools_for_choice(tools, tool_choice), **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Method = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Structured output with the same three methods as ChatOllama.

        ``json_schema`` (default) sends the schema as Ollama's ``format`` (the server
        constrains decoding); ``function_calling`` binds the schema as the only tool;
        ``json_mode`` sends ``format="json"`` (describe the shape in the prompt).
        """
        return structured_output(self, schema, method=method, include_raw=include_raw, **kwargs)

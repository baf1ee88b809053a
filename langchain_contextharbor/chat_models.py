"""HybridChatOllama: one LangChain chat model over several Ollama servers.

Why a chat model and not ``gpu.with_fallbacks([cpu])``: ``RunnableWithFallbacks`` works in
``create_agent``, but it is not a ``BaseChatModel`` for code that checks, it sends every call
to a failing server first again, it has no idea which server should take a model, and a
stream that fails after its first chunk raises a raw transport error
(``tests/docs/test_with_fallbacks_facts.py`` shows each point). This class is a real
``BaseChatModel`` that wraps one ``ChatOllama`` per backend, plans every call with the
pure router (:mod:`langchain_contextharbor.routing`) and fails over inside the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import Token
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal, cast

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import ChatPromptValue, PromptValue
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from langchain_core.utils.utils import LC_ID_PREFIX
from langchain_ollama import ChatOllama
from pydantic import BaseModel, Field, PrivateAttr, model_validator
from typing_extensions import is_typeddict

from langchain_contextharbor._admission import Lease, admit
from langchain_contextharbor._config import RoutedFields
from langchain_contextharbor._failover import _Call, _Try, all_failed, metadata, settle_failure
from langchain_contextharbor._pool import InnerPool
from langchain_contextharbor._router import Router
from langchain_contextharbor._transport import (
    CALL_DEADLINE,
    FIRST_TOKEN,
    MaskedClientKwargs,
)
from langchain_contextharbor.backends import (
    BackendConfig,
)
from langchain_contextharbor.classify import (
    FailoverCategory,
)
from langchain_contextharbor.errors import (
    AllBackendsFailedError,
    ConfigurationError,
    EmptyResponseError,
    TruncatedStreamError,
)
from langchain_contextharbor.fleet import REDIS_URL_ENV, SharedState, make_shared_state
from langchain_contextharbor.routing import RoutePlan, RoutePolicy, SpeedPrior
from langchain_contextharbor.sizing import DEFAULT_NUM_CTX, GIB

__all__ = ["ABANDONED_EVENT", "HybridChatOllama"]

logger = logging.getLogger("langchain_contextharbor")

# ChatOllama parameters that apply to every inner model unchanged.
_PASSTHROUGH = (
    "temperature",
    "num_ctx",
    "num_gpu",
    "num_thread",
    "num_predict",
    "keep_alive",
    "reasoning",
    "format",
    "seed",
    "top_k",
    "top_p",
    "mirostat",
    "mirostat_eta",
    "mirostat_tau",
    "repeat_last_n",
    "repeat_penalty",
    "tfs_z",
    "logprobs",
    "top_logprobs",
)

ABANDONED_EVENT = "contextharbor_abandoned"
"""Name of the custom event an ``invoke`` fires when a backend died after some of its
tokens reached ``on_llm_new_token`` observers and the call moved on to another backend.
Its data: ``{"backend", "chunks", "chars", "error_class"}``; observers discard the tokens
of that run seen so far. The replacement's first chunk carries the same facts in
``response_metadata["contextharbor"]["abandoned"]``."""


def _substantive(chunk: ChatGenerationChunk) -> bool:
    """Whether a chunk carries something the caller sees (the stream's commit point)."""
    msg = chunk.message
    if msg.content:
        return True
    if isinstance(msg, AIMessageChunk) and (msg.tool_call_chunks or msg.tool_calls):
        return True
    return bool(msg.additional_kwargs.get("reasoning_content"))




class _InnerChatOllama(MaskedClientKwargs, ChatOllama):
    """The ChatOllama of one backend (client kwargs masked in reprs and dumps)."""


_Armed = tuple[Token[float | None] | None, Token[float | None] | None]


def _arm(att: _Attempt) -> _Armed | None:
    """Publish the call's deadline (``Timeouts.total``, off by default) and the attempt's
    warm first-token deadline (when no model load is coming) to the transport while the
    request goes out and its head is awaited; nothing is set when neither applies."""
    if att.deadline is None and att.first_token is None:
        return None
    total = None
    if att.deadline is not None:
        att.check_deadline()
        total = CALL_DEADLINE.set(att.deadline)
    first = FIRST_TOKEN.set(att.first_token) if att.first_token is not None else None
    return (total, first)


def _disarm(armed: _Armed | None) -> None:
    if armed is None:
        return
    if armed[1] is not None:
        try:
            FIRST_TOKEN.reset(armed[1])
        except ValueError:  # finalised in another context: nothing of ours is left there
            pass
    if armed[0] is not None:
        try:
            CALL_DEADLINE.reset(armed[0])
        except ValueError:
            pass


@dataclass(frozen=True)
class SelectedBackend:
    """One backend as ``_select_backend`` names it (the URL without credentials)."""

    name: str
    url: str
    kind: str


class _Abandoned:
    """Marker the invoke loop yields when an attempt whose tokens callbacks already saw
    failed and the call moves on to another backend (see :data:`ABANDONED_EVENT`)."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


class _Attempt(_Try):
    """One try on one backend: what the sync and async call loops share per chunk.

    ``feed`` takes each chunk from the inner stream and returns the chunks to hand on
    now; ``finish`` runs the end-of-stream checks and returns what was still held. With
    ``gate`` (streaming) chunks are held until the first substantive one (the commit
    point: after it a failure can no longer fall back). Without it (invoke) every chunk
    is handed on at once (for ``on_llm_new_token``) but nothing ever commits: the
    caller's result is assembled from one complete attempt, so any failure falls back.
    It knows the call only as plain values (its record and the admission's lease).
    """

    __slots__ = ("gate", "held", "last", "passing", "quick", "ttft")

    def __init__(self, call: _Call, lease: Lease, gate: bool) -> None:
        # The fields of _Try, set here rather than by a call to its __init__ (hot path).
        self.call = call
        self.lease = lease
        self.cfg = cfg = lease.cfg
        self.started = time.perf_counter()
        self.delivered = 0
        self.chars = 0
        self.committed = False
        total = cfg.timeouts.total
        self.deadline = None if total is None else call.started + total
        """``time.monotonic()`` by which this call must end (``Timeouts.total``)."""
        self.first_token = lease.first_token
        """The lease's warm first-token deadline (None: the configured one applies)."""
        self.gate = gate
        self.ttft: float | None = None
        self.held: list[ChatGenerationChunk] = []
        self.last: ChatGenerationChunk | None = None
        self.passing = False
        """Every further chunk goes straight on (committed, or not gated and stamped)."""
        self.quick = False
        """Passing with no total deadline to check: the call loops then do :meth:`feed`'s
        book-keeping inline (last chunk, count, characters), with no call per chunk."""

    def feed(self, chunk: ChatGenerationChunk) -> Sequence[ChatGenerationChunk]:
        """The chunks to yield now (often none while held, or just this one)."""
        self.last = chunk
        if self.deadline is not None:
            self.check_deadline()
        if self.passing:  # the common case: one chunk in, the same chunk out
            self.delivered += 1
            content = chunk.message.content
            if type(content) is str:
                self.chars += len(content)
            return (chunk,)
        held = self.held
        held.append(chunk)
        if not self.gate or _substantive(chunk):
            # Streaming: the first substantive chunk commits. Invoke: every chunk goes on
            # at once (for on_llm_new_token), the first one stamped, nothing committed.
            self.committed = self.gate
            self.passing = True
            self.quick = self.deadline is None
            self.ttft = time.perf_counter() - self.started
            self._stamp()
            self.held = []
            self.delivered += len(held)
            chars = self.chars
            for c in held:  # mostly one chunk: no generator expression to create
                chars += len(c.text)
            self.chars = chars
            return held
        return ()

    def finish(self) -> list[ChatGenerationChunk]:
        """End-of-stream checks (raise to fail over); returns the chunks still held."""
        last = self.last
        if last is None:
            raise EmptyResponseError(self.cfg.name)
        info = last.generation_info  # Ollama's closing chunk: ChatOllama copies it here
        if not (info and info.get("done") is True):
            raise TruncatedStreamError(self.cfg.name)
        held = self.held
        if held:  # a stream with no visible content
            self._stamp()
            self.held = []
        return held

    def succeeded(self) -> None:
        last = self.last
        self.lease.succeeded(
            time.perf_counter() - self.started,
            self.ttft,
            self.call.model,
            last.generation_info if last is not None else None,
        )

    def abandoned(self, exc: BaseException) -> _Abandoned | None:
        """After a failover: the marker that tells observers which tokens to discard."""
        if self.delivered == 0:
            return None
        data = {
            "backend": self.cfg.name,
            "chunks": self.delivered,
            "chars": self.chars,
            "error_class": type(exc).__name__,
        }
        self.call.abandoned.append(data)
        return _Abandoned(data)

    def _stamp(self) -> None:
        """Routing metadata goes on the first chunk the caller sees."""
        self.held[0].message.response_metadata.update(
            metadata(self.call, self.cfg, self.lease.reasons)
        )


class _HotState:
    """Mutable state behind one HybridChatOllama (router, inner models, caches)."""

    __slots__ = (
        "async_inner",
        "configs",
        "ident",
        "owner",
        "policy_cache",
        "pool",
        "router",
        "sync_inner",
    )

    def __init__(self, configs: list[BackendConfig], router: Router, owner: int) -> None:
        self.owner = owner
        self.configs = configs
        self.router = router
        self.pool: InnerPool[ChatOllama] = InnerPool(configs, spawn=router.submit_background)
        self.sync_inner = self.pool.sync
        """The pool's sync map itself: the call loops read it with one ``dict.get``."""
        self.async_inner = self.pool.per_loop
        """The pool's per-loop map itself, read by :meth:`HybridChatOllama._async_inner_built`."""
        self.policy_cache: tuple[tuple[Any, ...], RoutePolicy] | None = None
        self.ident: dict[str, Any] | None = None
        """``_identifying_params`` (langchain-core asks on every call); reset with the
        inner models when ``model`` or a passed-through parameter is set."""


class HybridChatOllama(RoutedFields, BaseChatModel):
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
    _passthrough = _PASSTHROUGH

    # Shared with HybridOllamaEmbeddings and documented there (RoutedFields): model,
    # backends, gpu_url, cpu_url, base_url, num_ctx, num_gpu, num_thread, timeout,
    # timeouts, size_threshold_gb, model_sizes, prefer_warm, spillover, breaker, probe_ttl,
    # background_probes, clock, nvml, host_memory.
    client_kwargs: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    """ChatOllama's argument: httpx client options applied to every backend (a backend's
    own ``client_kwargs``/``headers`` win per key). ``headers`` merge into each backend's
    headers; use ``timeout=``/``timeouts=`` instead of a ``timeout`` here."""
    validate_model_on_init: bool = False
    """Probe every backend at construction and raise ModelNotAvailableError (or
    NoBackendAvailableError) when none of them can serve ``model``."""

    # --- ChatOllama parameters, applied to every inner model -------------------------
    temperature: float | None = None
    """Sampling temperature (higher answers more freely; 0 picks the likeliest token).
    None: the model's default (0.8 unless its Modelfile sets another)."""
    num_predict: int | None = None
    """Most tokens to generate (``-1``: no limit). None: the server's default."""
    max_tokens: int | None = None
    """Standard name for ``num_predict``."""
    keep_alive: int | str | None = None
    """How long the server keeps the model loaded after a call (``"5m"``, seconds, ``0``
    unloads at once, ``-1`` keeps it). None: the server's default (5 minutes). The planner
    prefers a server where the model is still loaded."""
    reasoning: bool | str | None = None
    """Thinking models: True returns the reasoning apart, in
    ``additional_kwargs["reasoning_content"]``; False turns thinking off; ``"low"``/
    ``"medium"``/``"high"`` set its effort (gpt-oss). None: the model's default."""
    format: Literal["", "json"] | dict[str, Any] | None = None
    """``"json"`` or a JSON schema the server constrains decoding to (``with_structured_output``
    sets it per call). None: free text."""
    stop: list[str] | None = None
    """Stop sequences: generation ends at the first one. A call's own ``stop=`` wins."""
    seed: int | None = None
    """Random seed: with it the same prompt and options give the same answer on one server
    (not necessarily on a GPU and a CPU server alike). None: random."""
    top_k: int | None = None
    """Sample only from the k likeliest tokens (Ollama's default 40); lower is more
    conservative."""
    top_p: float | None = None
    """Nucleus sampling: only from the likeliest tokens whose probabilities add up to p
    (Ollama's default 0.9); lower is more conservative."""
    mirostat: int | None = None
    """Mirostat sampling, which steers perplexity: 0 off (Ollama's default), 1 Mirostat,
    2 Mirostat 2.0."""
    mirostat_eta: float | None = None
    """Mirostat's learning rate: how fast it reacts to the text so far (default 0.1)."""
    mirostat_tau: float | None = None
    """Mirostat's target: lower is more focused and coherent (default 5.0)."""
    repeat_last_n: int | None = None
    """How many recent tokens the repeat penalty looks at (default 64; 0 off, -1 all of
    ``num_ctx``)."""
    repeat_penalty: float | None = None
    """How strongly repeated tokens are penalised (default 1.1; higher penalises more)."""
    tfs_z: float | None = None
    """Tail-free sampling: less weight on unlikely tokens (1.0 is off). Kept for ChatOllama
    compatibility; recent Ollama versions ignore it."""
    logprobs: bool | None = None
    """Return each generated token's log probability (in ``response_metadata``), on servers
    that support it. None: not asked for."""
    top_logprobs: int | None = None
    """With ``logprobs``: also the N likeliest alternatives of each token."""
    max_retries: int = 0
    """Extra passes over the candidates when every backend failed (breakers permitting)."""

    # --- routing ---------------------------------------------------------------------
    background_trials: bool = True
    """When a circuit's cooldown is over (or a probe saw the server back), its trial call is
    a one-token request the router sends in the background while the user's call goes to
    the next candidate: a server that still hangs costs the caller nothing. The trial's
    outcome moves the breaker. False: the next user call is the trial, as in a classic
    breaker. (With no other candidate left, the user's call is the trial either way.)"""
    warm_first_token_timeout: float | None = 10.0
    """First-token deadline (seconds, at least) when no model load is coming: the model is
    loaded on that server (``/api/ps``, or a call on it succeeded in the last two minutes)
    and the server answered recently. The actual deadline is five times the learned time to
    first token when that is longer, and never more than ``timeouts.first_token`` (whose
    120 s default is sized for a cold load). A hung warm server then costs this, not two
    minutes. None: always the configured first-token timeout."""
    speed_prior: SpeedPrior = Field(default_factory=SpeedPrior)
    """Speeds assumed per backend kind before the router has measured any call there
    (default: GPU 60 tokens/s, CPU 6 tokens/s). Learned speeds replace them per backend
    and model from Ollama's timings in every answer."""
    calibrate_speeds: bool = True
    """When the prior alone keeps a saturated backend's calls off another one (nothing
    measured there for the model yet), measure that backend: the router sends it one short
    chat (16 tokens) in the background and learns its speed from Ollama's timings, so the
    next plans decide on evidence (servers that are in fact alike then share a burst). At
    most once per backend and model per five minutes, one at a time per backend, only to a
    healthy backend with a free slot, which it holds while it runs; it never moves a
    breaker. The request shows in the server's log and in ``stats()["calibrations"]``.
    False: never (the prior decides until a real call lands there)."""
    first_probe_wait: float = 0.25
    """Seconds the first plan of a new model instance may wait for the backends' first
    probes (sync calls wait on the shared probe, async calls await it). Without it the
    first call is planned blind: a model only on the CPU server would first be sent to the
    GPU server for a 404. After the first probes no call waits. 0 disables the wait."""
    oom_cooldown: float = 120.0
    """Seconds an out-of-memory answer keeps that model/context off that backend."""
    exceptions_to_handle: tuple[type[BaseException] | FailoverCategory, ...] | None = None
    """Replace the built-in classifier's decision: fail over only on these exception types
    or categories (like ``with_fallbacks``)."""
    shared_state: str | SharedState | None = Field(
        default_factory=from_env(REDIS_URL_ENV, default=None), exclude=True, repr=False
    )
    """Fleet mode: share in-flight counts, circuit breakers, 404/OOM marks and probe results
    with every worker process that names the same store, e.g. ``"redis://127.0.0.1:6379/0"``
    (env ``CONTEXTHARBOR_REDIS_URL``; needs ``pip install 'langchain-contextharbor[fleet]'``).
    None (default): this process decides alone. Never shown in reprs or dumps."""

    _hot: _HotState = PrivateAttr()
    """Everything the call path needs, in one plain object: pydantic private attributes
    cost ~2 us per read, this costs one dict lookup per call."""

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
            raise self._all_failed(_Call(self.model, num_ctx, plan))

    @model_validator(mode="after")
    def _setup(self) -> HybridChatOllama:
        self._check_fields("llama3.1:8b")
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
    def _h(self) -> _HotState:
        h: _HotState = self.__pydantic_private__["_hot"]  # type: ignore[index]
        if h.owner != id(self):
            # A model_copy() (or copy.copy) shares the private state of its original. Keep
            # the router (breakers and probes describe the servers, not this object), but
            # build inner models from this copy's own parameters.
            h = _HotState(h.configs, h.router, id(self))
            self.__pydantic_private__["_hot"] = h  # type: ignore[index]
        return h

    def _inner_params_changed(self) -> None:
        h = (self.__pydantic_private__ or {}).get("_hot")
        if isinstance(h, _HotState):
            h.ident = None
            h.pool.invalidate()

    @property
    def backend_configs(self) -> list[BackendConfig]:
        """The resolved backends, in configuration order."""
        return list(self._h.configs)

    @property
    def router(self) -> Router:
        """The router (probes, breakers, learned speeds) this model plans with; hand it to
        ``HybridOllamaEmbeddings.from_chat_model`` to share it with a retriever."""
        return self._h.router

    def backend_model(self, name: str) -> ChatOllama:
        """The inner ChatOllama of backend ``name`` (for sync use), built on first use; the
        first build also builds the other backends' clients in the background."""
        return self._h.pool.get(name, self._build_inner)

    def _prebuild_sync_inners(self) -> None:
        self._h.pool.prebuild(self._build_inner)

    @property
    def inner_models(self) -> dict[str, ChatOllama]:
        """One ChatOllama per backend name (built on access)."""
        return {c.name: self.backend_model(c.name) for c in self._h.configs}

    def _async_inner_built(self, name: str) -> ChatOllama | None:
        """The inner model of ``name`` for the running loop when it exists (the hot path:
        no coroutine to create and await), else None. ``InnerPool.built_for_loop`` inlined:
        one call less per async attempt."""
        loop = asyncio.get_running_loop()
        entry = self._h.async_inner.get((name, id(loop)))
        if entry is not None and entry[0]() is loop:
            return entry[1]
        return None

    async def _async_backend_model(self, name: str) -> ChatOllama:
        """The inner model of ``name`` for the running loop (``ollama.AsyncClient`` binds
        its connections to the loop of its first request), built on first use."""
        return await self._h.pool.afor_loop(name, self._build_inner)

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
    def _policy(self, h: _HotState | None = None) -> RoutePolicy:
        key = (self.size_threshold_gb, self.prefer_warm, self.spillover, self.speed_prior)
        if h is None:
            h = self._h
        cached = h.policy_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        policy = RoutePolicy(
            size_threshold_bytes=int(self.size_threshold_gb * GIB),
            prefer_warm=self.prefer_warm,
            spillover=self.spillover,
            prior=self.speed_prior,
        )
        h.policy_cache = (key, policy)
        return policy

    def _num_ctx(self, kwargs: Mapping[str, Any]) -> int:
        options = kwargs.get("options")
        if isinstance(options, Mapping) and isinstance(options.get("num_ctx"), int):
            return int(options["num_ctx"])
        return self.num_ctx or DEFAULT_NUM_CTX

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

    def _plan(self, model: str, num_ctx: int) -> RoutePlan:
        """The one place calls are planned (select_backend, each call, each retry pass):
        the router's non-blocking prepare step, its wait for evidence (at once inside an
        event loop: the async call awaited it before), then the plan itself (no I/O)."""
        h = self._h
        router = h.router
        router.prepare(model)
        router.wait_for_evidence()
        try:
            return router.plan(
                model, num_ctx=num_ctx, sizes=self.model_sizes, policy=self._policy(h)
            )
        except ValueError as exc:  # a bad value put into model_sizes after construction
            raise ConfigurationError(str(exc)) from None

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

    # ------------------------------------------------------------------ failover core
    def _start(self, kwargs: dict[str, Any]) -> _Call:
        model = kwargs.get("model") or self.model
        if type(model) is not str:
            model = str(model)
        # Most calls pass no options: then the context size is the instance's (_num_ctx).
        num_ctx = self._num_ctx(kwargs) if "options" in kwargs else self.num_ctx or DEFAULT_NUM_CTX
        plan = self._plan(model, num_ctx)
        if logger.isEnabledFor(logging.INFO):  # DEBUG on implies INFO on: one check per call
            logger.info("route %s: %s -> %s", model, plan.summary, plan.backends or "none")
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("route %s details:\n%s", model, plan.explain())
        return _Call(model, num_ctx, plan)

    def _settle_failure(self, att: _Attempt, exc: Exception) -> bool:
        """Record a failed attempt and decide (see :func:`_failover.settle_failure`): True
        = try the next backend, False = the caller re-raises ``exc`` as it is. Shared by
        the sync and async loops, which differ only in how they iterate."""
        return settle_failure(att, exc, self.exceptions_to_handle)

    def _all_failed(self, call: _Call) -> AllBackendsFailedError:
        return all_failed(call, self._h.configs)

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

    def _routed_stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        *,
        gate: bool,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk | _Abandoned]:
        """Try the admitted candidates in order. With ``gate`` (streaming), chunks are held
        back until the first substantive one; without it (invoke), chunks flow at once but
        a death mid-generation still falls back (an :class:`_Abandoned` marker says so).
        Admission lives behind the leases (:mod:`._admission`), the per-chunk decisions in
        :class:`_Attempt`, the failure decision in :mod:`._failover`: this loop and its
        async twin only iterate, and differ only in ``await``/``async for``."""
        h = self._h
        router = h.router
        if router.evidence_due():
            router.wait_for_evidence()  # the explicit step before planning (and the twin's)
        call = self._start(kwargs)
        if stop is None:
            stop = self.stop or None
        retries, spill = self.max_retries, self.spillover
        for lease in admit(router, call, spillover=spill, retries=retries, replan=self._plan):
            with lease:  # released on exit, as abandoned unless an outcome was recorded
                att = _Attempt(call, lease, gate)
                inner = h.sync_inner.get(lease.name)
                if inner is None:
                    inner = self.backend_model(lease.name)
                stream = cast(
                    Generator[ChatGenerationChunk, None, None],
                    inner._iterate_over_stream(messages, stop, **kwargs),
                )
                armed: _Armed | None = None
                try:
                    armed = _arm(att)
                    for chunk in stream:
                        if armed is not None:
                            _disarm(armed)
                            armed = None
                        if att.quick:  # passing on, no deadline: see _Attempt.quick
                            att.last = chunk
                            att.delivered += 1
                            content = chunk.message.content
                            if type(content) is str:
                                att.chars += len(content)
                            yield chunk
                        else:
                            yield from att.feed(chunk)
                    tail = att.finish()
                except Exception as exc:  # not GeneratorExit nor cancellation: no verdict
                    if not self._settle_failure(att, exc):
                        raise
                    marker = att.abandoned(exc)
                    if marker is not None:
                        yield marker
                    continue
                finally:
                    if armed is not None:
                        _disarm(armed)
                    stream.close()
                yield from tail
                att.succeeded()
                return
        raise self._all_failed(call)

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

    async def _arouted_stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        *,
        gate: bool,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk | _Abandoned]:
        """The async twin of :meth:`_routed_stream`; the decisions are shared."""
        h = self._h
        router = h.router
        if router.evidence_due():
            await router.await_evidence()  # so _start's plan never blocks the loop
        call = self._start(kwargs)
        if stop is None:
            stop = self.stop or None
        retries, spill = self.max_retries, self.spillover
        for lease in admit(router, call, spillover=spill, retries=retries, replan=self._plan):
            with lease:
                att = _Attempt(call, lease, gate)
                inner = self._async_inner_built(lease.name)
                if inner is None:
                    inner = await self._async_backend_model(lease.name)
                stream = cast(
                    AsyncGenerator[ChatGenerationChunk, None],
                    inner._aiterate_over_stream(messages, stop, **kwargs),
                )
                armed: _Armed | None = None
                try:
                    armed = _arm(att)
                    async for chunk in stream:
                        if armed is not None:
                            _disarm(armed)
                            armed = None
                        if att.quick:  # the same pass-through as the sync loop's
                            att.last = chunk
                            att.delivered += 1
                            content = chunk.message.content
                            if type(content) is str:
                                att.chars += len(content)
                            yield chunk
                        else:
                            for out in att.feed(chunk):
                                yield out
                    tail = att.finish()
                except Exception as exc:
                    if not self._settle_failure(att, exc):
                        raise
                    marker = att.abandoned(exc)
                    if marker is not None:
                        yield marker
                    continue
                finally:
                    if armed is not None:
                        _disarm(armed)
                    await stream.aclose()
                for out in tail:
                    yield out
                att.succeeded()
                return
        raise self._all_failed(call)

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
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [t["function"]["name"] for t in formatted]
        chosen: str | None = None
        if isinstance(tool_choice, dict):
            chosen = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        elif isinstance(tool_choice, str) and tool_choice not in (
            "auto",
            "any",
            "required",
            "none",
        ):
            chosen = tool_choice
        if tool_choice in ("none", False):
            formatted = []
        elif chosen is not None:
            if chosen not in names:
                raise ValueError(f"tool_choice {chosen!r} is not one of the bound tools {names}")
            formatted = [t for t in formatted if t["function"]["name"] == chosen]
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Structured output with the same three methods as ChatOllama.

        ``json_schema`` (default) sends the schema as Ollama's ``format`` (the server
        constrains decoding); ``function_calling`` binds the schema as the only tool;
        ``json_mode`` sends ``format="json"`` (describe the shape in the prompt).
        """
        kwargs.pop("strict", None)  # Ollama's format is always enforced; nothing to relax
        if kwargs:
            raise ValueError(f"unsupported arguments: {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        parser: Runnable[Any, Any]
        if method == "function_calling":
            if schema is None:
                raise ValueError("schema is required for method='function_calling'")
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [schema],
                tool_choice=name,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": tool},
            )
            if is_pydantic:
                parser = PydanticToolsParser(tools=[cast(Any, schema)], first_tool_only=True)
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        elif method == "json_mode":
            llm = self.bind(
                format="json",
                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            )
            parser = _pydantic_parser(schema) if is_pydantic else JsonOutputParser()
        elif method == "json_schema":
            if schema is None:
                raise ValueError("schema is required for method='json_schema'")
            # The same ``format`` ChatOllama sends: a TypedDict gets "required" (without it,
            # grammar-constrained decoding may leave fields out), a dict goes as it is.
            json_schema: dict[str, Any]
            if is_pydantic:
                model_cls = cast(Any, schema)
                json_schema = (
                    model_cls.model_json_schema()
                    if hasattr(model_cls, "model_json_schema")
                    else model_cls.schema()
                )
            elif is_typeddict(schema):
                json_schema = convert_to_json_schema(schema)
                if "required" not in json_schema:
                    json_schema["required"] = list(json_schema.get("properties", {}))
            elif isinstance(schema, dict):
                json_schema = schema
            else:
                json_schema = convert_to_json_schema(schema)
            llm = self.bind(
                format=json_schema,
                ls_structured_output_format={
                    "kwargs": {"method": method},
                    "schema": schema if is_pydantic else json_schema,
                },
            )
            parser = _pydantic_parser(schema) if is_pydantic else JsonOutputParser()
        else:
            raise ValueError(
                f"unknown method {method!r}; use json_schema, function_calling or json_mode"
            )
        if not include_raw:
            return llm | parser
        parser_assign = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
        return RunnableMap(raw=llm) | with_fallback


def _pydantic_parser(schema: Any) -> Runnable[Any, Any]:
    from langchain_core.output_parsers import PydanticOutputParser

    return PydanticOutputParser(pydantic_object=schema)


def _to_result(final: ChatGenerationChunk, run_id: str | None = None) -> ChatResult:
    msg = final.message
    tool_calls = msg.tool_calls if isinstance(msg, AIMessageChunk) else []
    usage = msg.usage_metadata if isinstance(msg, AIMessageChunk) else None
    message = AIMessage(
        content=msg.content,
        additional_kwargs=msg.additional_kwargs,
        response_metadata=msg.response_metadata,
        tool_calls=tool_calls,
        usage_metadata=usage,
        id=msg.id or run_id,
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info=final.generation_info)]
    )

"""The chat model's own fields: ChatOllama's parameters and the chat-only routing knobs.

Why a module of its own: ``HybridChatOllama`` is a drop-in for ``ChatOllama``, so it accepts
ChatOllama's sampling and request parameters under the same names and hands them unchanged
to the inner ``ChatOllama`` of every backend (:data:`_PASSTHROUGH`); beside them it has the
knobs of what only a chat call does (background trials, the warm first-token deadline,
speed calibration, retries, fleet mode). They are configuration, each field documented
where it is declared, so the chat model's class body holds what it does. The fields shared
with the embeddings are :class:`~langchain_contextharbor._config.RoutedFields`, the base
here (so the field order, and with it reprs, dumps and the signature, is the one before).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from langchain_core.utils import from_env
from pydantic import Field, field_validator, model_validator

from langchain_contextharbor._config import RoutedFields
from langchain_contextharbor.classify import FailoverCategory
from langchain_contextharbor.fleet import REDIS_URL_ENV, SharedState
from langchain_contextharbor.routing import SpeedPrior

__all__ = ["ChatFields"]

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


class ChatFields(RoutedFields):
    """The chat model's own fields: ChatOllama's parameters (those in :data:`_PASSTHROUGH`
    reach every inner model, with RoutedFields' ``num_ctx``, ``num_gpu``, ``num_thread``),
    its client and validation arguments, and the routing knobs only a chat call has."""

    _passthrough = _PASSTHROUGH

    client_kwargs: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    """ChatOllama's argument: httpx client options applied to every backend (a backend's
    own ``client_kwargs``/``headers`` win per key). ``headers`` merge into each backend's
    headers; use ``timeout=``/``timeouts=`` instead of a ``timeout`` here."""
    sync_client_kwargs: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    """ChatOllama's argument: httpx options of the sync clients only, merged over
    ``client_kwargs`` (these win per key, ``headers`` per header; a backend's own headers
    win over both). Not ``timeout``/``transport``/``auth``/TLS: those are per backend."""
    async_client_kwargs: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    """ChatOllama's argument: as ``sync_client_kwargs``, for the async clients."""
    validate_model_on_init: bool = False
    """Probe every backend at construction and raise, when none of them can serve
    ``model``, ModelNotAvailableError (or NoBackendAvailableError, ...), each also a
    ``ValueError`` (:class:`~langchain_contextharbor.errors.ModelValidationError`) as
    ChatOllama's check raises."""

    # --- sampling and request parameters (those in _PASSTHROUGH reach every inner model)
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
    """With ``logprobs``: also the N likeliest alternatives of each token (a positive
    number). Set alone, it turns ``logprobs`` on with ChatOllama's warning; with
    ``logprobs=False`` it is refused, as there."""
    max_retries: int = 0
    """Extra passes over the candidates when every backend failed (breakers permitting)."""

    @field_validator("top_logprobs")
    @classmethod
    def _positive_top_logprobs(cls, v: int | None) -> int | None:
        """ChatOllama's check, with its text."""
        if v is not None and v < 1:
            raise ValueError("`top_logprobs` must be a positive integer.")
        return v

    @model_validator(mode="after")
    def _logprobs_for_top_logprobs(self) -> Any:
        """ChatOllama's rule: ``top_logprobs`` needs ``logprobs``; left unset, it is turned
        on (with ChatOllama's warning); set to False, the pair is refused. Written to
        ``__dict__``: the model's own ``_setup`` has not built the inner pool yet."""
        if self.top_logprobs is not None and self.logprobs is not True:
            if self.logprobs is False:
                raise ValueError(
                    "`top_logprobs` is set but `logprobs` is explicitly `False`. "
                    "Either set `logprobs=True` to use `top_logprobs`, or remove "
                    "`top_logprobs`."
                )
            self.__dict__["logprobs"] = True
            warnings.warn(
                "`top_logprobs` is set but `logprobs` was not explicitly enabled. "
                "Setting `logprobs=True` automatically.",
                UserWarning,
                stacklevel=2,
            )
        return self

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

"""What a model's fields resolve to: its backends, its router settings, its errors.

Why one module: ``HybridChatOllama`` and ``HybridOllamaEmbeddings`` take the same
configuration (``base_url`` *or* ``backends`` *or* ``gpu_url``/``cpu_url`` from the
environment, a default ``timeout``/``timeouts``, the routing knobs, the router's settings,
the injected clock/NVML/host-memory reader) and each declared, documented and resolved it
by hand, with eight hand-written finite-number checks and a 13-keyword ``Router(...)``
call. Here it is written once: :class:`RoutedFields` declares the shared fields and
resolves them (the checked backend list, one frozen
:class:`~langchain_contextharbor._settings.RouterSettings`, the router), and
:func:`configuration_errors` is the one place a pydantic ``ValidationError`` (or a
checker's ``ValueError``) becomes a :class:`~langchain_contextharbor.errors.ConfigurationError`
that never echoes an input (URLs and headers carry secrets).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from langchain_core.utils import from_env
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from langchain_contextharbor._router import Router
from langchain_contextharbor._secrets import _SecretHeaders, refuse_query_params
from langchain_contextharbor._settings import RouterSettings, check_seconds
from langchain_contextharbor._transport import inner_client_kwargs
from langchain_contextharbor.backends import (
    CPU_URL_ENV,
    DEFAULT_CPU_URL,
    BackendConfig,
    Timeouts,
    backends_from_env,
    coerce_backends,
    default_gpu_url,
    hold_secret_url,
    ollama_host_url,
    redact_url,
    validation_problems,
)
from langchain_contextharbor.breaker import BreakerPolicy
from langchain_contextharbor.errors import ConfigurationError
from langchain_contextharbor.fleet import SharedState
from langchain_contextharbor.sizing import DEFAULT_MODEL_SIZES, validate_model_sizes

__all__ = [
    "RoutedFields",
    "check_side_kwargs",
    "configuration_errors",
    "router_settings",
    "with_client_kwargs",
]

_SETTING_OF_FIELD = {"breaker": "breaker_policy", "warm_first_token_timeout": "warm_first_token"}
"""A model field whose :class:`RouterSettings` field has another name (all others match)."""
_FIELD_OF_SETTING = {v: k for k, v in _SETTING_OF_FIELD.items()}

_SECRET_URL_FIELDS = frozenset({"base_url", "gpu_url", "cpu_url", "shared_state"})
"""Fields whose URL may carry a secret: held as a :class:`~langchain_contextharbor.backends.
SecretUrl` (``shared_state`` is the chat model's own field, a Redis URL or a store)."""


def _plain(v: Any) -> str:
    return v.get_secret_value() if isinstance(v, SecretStr) else str(v)


@contextmanager
def configuration_errors(what: str) -> Iterator[None]:
    """Turn a ``ValidationError`` of ``what`` (``"HybridChatOllama"``) into one readable
    :class:`ConfigurationError` naming each bad field, and a checker's ``ValueError`` into
    one with its message; inputs are never echoed."""
    try:
        yield
    except ConfigurationError:
        raise
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigurationError(f"invalid {what} configuration: {problems}") from None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def router_settings(fields: Mapping[str, Any]) -> RouterSettings:
    """One checked :class:`RouterSettings` from a model's fields (``breaker``,
    ``probe_ttl``, ``warm_first_token_timeout``, ...); a bad value is reported under the
    model's field name, the one the user wrote."""
    try:
        return RouterSettings(**{_SETTING_OF_FIELD.get(k, k): v for k, v in fields.items()})
    except ConfigurationError as exc:
        head, sep, tail = str(exc).partition(" must be ")
        if sep and head in _FIELD_OF_SETTING:
            raise ConfigurationError(f"{_FIELD_OF_SETTING[head]}{sep}{tail}") from None
        raise


def with_client_kwargs(cfg: BackendConfig, extra: Mapping[str, Any]) -> BackendConfig:
    """``cfg`` with ChatOllama-style ``client_kwargs`` merged in (the backend's own win)."""
    bad = sorted({"timeout", "base_url", "host", "auth"} & set(extra))
    if bad:
        raise ConfigurationError(
            f"client_kwargs may not set {bad}: use timeout=/timeouts= for time limits and "
            "headers (or user:password@ in the URL) for credentials"
        )
    refuse_query_params(extra, "client_kwargs")
    kwargs = dict(extra)
    headers = kwargs.pop("headers", None) or {}
    if not isinstance(headers, Mapping):
        raise ConfigurationError("client_kwargs['headers'] must be a mapping of strings")
    fields = {f: getattr(cfg, f) for f in type(cfg).model_fields}
    fields["headers"] = {
        **{str(k): _plain(v) for k, v in headers.items()},
        **{k: v.get_secret_value() for k, v in cfg.headers.items()},
    }
    fields["client_kwargs"] = {**kwargs, **cfg.client_kwargs}
    try:
        return BackendConfig(**fields)
    except Exception as exc:
        # BackendConfig's own errors name fields and never quote inputs; anything else
        # (a third party's text may) is named by its type only.
        msg = str(exc) if isinstance(exc, ConfigurationError) else type(exc).__name__
        raise ConfigurationError(f"client_kwargs do not fit backend {cfg.name!r}: {msg}") from None


_SIDE_KWARGS = ("sync_client_kwargs", "async_client_kwargs")
"""ChatOllama's (and OllamaEmbeddings') client arguments of one side, merged over
``client_kwargs`` for the sync or the async clients."""
_SIDE_REFUSED = frozenset(
    {"timeout", "base_url", "host", "auth", "transport", "async_transport", "verify", "cert"}
)


def check_side_kwargs(name: str, value: Any) -> None:
    """Refuse, at construction, a ``sync_client_kwargs``/``async_client_kwargs`` the
    router cannot honour: time limits, transports, TLS and auth are per backend (the
    phase-timeout transport and TLS context of every client come from there)."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a dict of httpx client options")
    bad = sorted(_SIDE_REFUSED & set(value))
    if bad:
        raise ConfigurationError(
            f"{name} may not set {bad}: use timeout=/timeouts= for time limits, headers for "
            "credentials, and a backend's own client_kwargs for transports and TLS"
        )
    refuse_query_params(value, name)
    if value.get("headers") is not None and not isinstance(value["headers"], Mapping):
        raise ConfigurationError(f"{name}['headers'] must be a mapping of strings")


def _side_kwargs(
    cfg: BackendConfig, shared: Mapping[str, Any] | None, side: Mapping[str, Any]
) -> dict[str, Any]:
    """The user's ``side`` kwargs for backend ``cfg``'s inner clients of that side: merged
    over ``client_kwargs`` as ChatOllama merges them (the side wins per key, and per header:
    its headers win over ``client_kwargs``' and lose to the backend's own). The headers
    travel as the side's ``auth`` (held as secrets, as every configured header is)."""
    out = {k: v for k, v in side.items() if k != "headers"}
    headers = side.get("headers") or {}
    if headers:
        shared_keys = set((shared or {}).get("headers") or {})
        own = {k: v for k, v in cfg.headers.items() if k not in shared_keys}
        merged = {
            **cfg.headers,
            **{
                str(k): v if isinstance(v, SecretStr) else SecretStr(str(v))
                for k, v in headers.items()
            },
            **own,
        }
        out["auth"] = _SecretHeaders(merged)
    return out


class RoutedFields(BaseModel):
    """The fields the chat model and the embeddings share, documented and resolved once.

    A base of both classes (listed first, so its ``__init__`` wraps theirs): it holds no
    state of its own; each subclass's ``_setup`` validator calls :meth:`_resolve_backends`,
    :meth:`_router_settings` and :meth:`_new_router`, names its inner model class and
    passed-through fields, and keeps its inner models in an
    :class:`~langchain_contextharbor._pool.InnerPool`."""

    model_config = ConfigDict(
        arbitrary_types_allowed=True, populate_by_name=True, hide_input_in_errors=True
    )

    model: str
    """The Ollama model tag, e.g. ``"llama3.1:8b"`` or ``"nomic-embed-text"``; required."""
    backends: list[BackendConfig] | None = None
    """Explicit backends (:class:`BackendConfig` or dicts), tried in the order the planner
    chooses. None (default): built from ``gpu_url`` and ``cpu_url``."""
    gpu_url: str | None = Field(default_factory=default_gpu_url, repr=False)
    """GPU server (env ``OLLAMA_GPU_URL``, else ``OLLAMA_HOST`` as Ollama's tools read it);
    empty string disables it. Hidden in reprs, credentials redacted in dumps."""
    cpu_url: str | None = Field(
        default_factory=from_env(CPU_URL_ENV, default=DEFAULT_CPU_URL), repr=False
    )
    """CPU server (env ``OLLAMA_CPU_URL``, default ``127.0.0.1:11435``); empty string
    disables it."""
    base_url: str | None = Field(default=None, repr=False)
    """The argument of ``ChatOllama``/``OllamaEmbeddings``: one server (``http://host:port``
    or Ollama's ``host:port``) as the only backend, named ``"default"``, so the class is a
    drop-in. Not together with ``backends``/``gpu_url``/``cpu_url``."""

    num_ctx: int | None = None
    """Context window in tokens, sent on every request (Ollama's ``num_ctx``). The router
    also sizes the KV cache by it when it decides where the model fits; None: the server's
    default, planned as 4096."""
    num_gpu: int | None = None
    """Layers to offload to the GPU (Ollama's ``num_gpu``); None: the server decides."""
    num_thread: int | None = None
    """CPU threads per request (Ollama's ``num_thread``); None: the server decides."""

    timeout: float | None = None
    """Request timeout in seconds, for drop-in use: sets the first-token (for embeddings,
    the whole answer) and idle timeouts of every backend that configures neither itself
    nor ``timeouts``. None (default): the ``Timeouts`` defaults."""
    timeouts: Timeouts | None = None
    """Default timeouts (connect, first token, idle, probe, total) of backends that do not
    set their own; None: ``Timeouts()`` (first token 120 s, sized for a cold model load)."""
    size_threshold_gb: float = 8.0
    """Models above this size (GiB) go CPU first when the GPU's free memory is unknown
    (no NVML, no ``/api/ps``): a guess that keeps a too-big model from a small GPU."""
    model_sizes: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MODEL_SIZES))
    """Weights size (GiB) per model; ``llm.model_sizes.update({...})`` to override. An entry
    you add or change wins over the size a server reports in ``/api/tags``; the built-in
    defaults do not (the server's real file size is better than a guess)."""
    prefer_warm: bool = False
    """Prefer a server that already has the model loaded even across GPU/CPU tiers."""
    spillover: bool = True
    """When the best backend is saturated, use another fitting one if it is expected to
    finish the request sooner (learned speeds, queue depth, cold loads; see
    :func:`~langchain_contextharbor.routing.estimate_finish`)."""
    breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    """When a backend's circuit opens (default: after one counted failure) and how long it
    stays open (15 s, doubling per failed trial up to 300 s); counted failures are those
    the classifier blames on the server (refused, hung, 5xx), never a bad request."""
    probe_ttl: float = 10.0
    """Seconds a health/status probe (``/api/version``, ``/api/tags``, ``/api/ps``) stays
    fresh. The embeddings also renew an older one, and wait for it, before a batch goes to
    that backend: the model's digest comes from it."""
    background_probes: bool = True
    """Refresh stale probes off the hot path (False: only on ``refresh()``)."""
    clock: Callable[[], float] | None = Field(default=None, exclude=True, repr=False)
    """Monotonic clock for breakers and caches (tests inject a fake one); None:
    ``time.monotonic``."""
    nvml: Any = Field(default=None, exclude=True, repr=False)
    """A pynvml-compatible module (tests inject a fake); default: real pynvml, lazily."""
    host_memory: Callable[[], int | None] | None = Field(default=None, exclude=True, repr=False)
    """Returns the host's available memory in bytes, or None when unknown (tests inject a
    fake); default: ``/proc/meminfo``. The planner reads it to decide whether a model fits
    the CPU server, which shares this machine's memory."""

    _inner_class: ClassVar[type[Any]]
    """The LangChain model built per backend (``ChatOllama``, ``OllamaEmbeddings``)."""
    _passthrough: ClassVar[tuple[str, ...]]
    """Fields handed unchanged to every inner model (besides ``model``)."""

    def __init__(self, **kwargs: Any) -> None:
        with configuration_errors(type(self).__name__):
            super().__init__(**kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SECRET_URL_FIELDS and isinstance(value, str):
            value = hold_secret_url(value)
        super().__setattr__(name, value)
        if name == "model" or name in self._passthrough:
            self._inner_params_changed()

    def _inner_params_changed(self) -> None:
        """The inner models carry ``model`` and the passed-through parameters: the
        subclass forgets them here, to rebuild them on next use."""

    def _inner_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._passthrough if getattr(self, k) is not None}

    def _build_inner(self, cfg: BackendConfig) -> Any:
        """A new inner model for backend ``cfg`` with this model's parameters."""
        kw = inner_client_kwargs(cfg)
        for side in _SIDE_KWARGS:
            own = getattr(self, side, None)
            if own:  # ours (the phase-timeout transport) win: the user's were checked
                kw[side] = {
                    **_side_kwargs(cfg, getattr(self, "client_kwargs", None), own),
                    **kw[side],
                }
        return self._inner_class(model=self.model, **kw, **self._inner_params())

    @field_validator("num_ctx", mode="before")
    @classmethod
    def _positive_num_ctx(cls, v: Any) -> Any:
        """A context window is a positive whole number of tokens. Ollama would take
        ``-5`` or ``0`` silently (its default instead) while the router planned memory for
        it, and pydantic alone would turn ``True`` into 1 and ``"5"`` into 5."""
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"must be a whole number of tokens > 0 or None, got {v!r}")
        return v

    @model_validator(mode="after")
    def _hold_secrets(self) -> RoutedFields:
        """Hold the URL fields (given or from the environment) as secrets, and the
        ``client_kwargs`` headers as ``SecretStr`` in a copy (the caller's dict is left
        alone), so ``vars(model)`` and ``pprint(model.__dict__)`` show neither. Runs before
        a subclass's own ``_setup``, which reads them (:func:`with_client_kwargs` and
        :func:`~langchain_contextharbor.fleet.make_shared_state` take either form)."""
        d = self.__dict__
        for name in _SECRET_URL_FIELDS & d.keys():
            if isinstance(d[name], str):
                d[name] = hold_secret_url(d[name])
        for name in ("client_kwargs", *_SIDE_KWARGS):
            kwargs = d.get(name)
            if isinstance(kwargs, Mapping) and isinstance(kwargs.get("headers"), Mapping):
                held = {
                    k: v if isinstance(v, SecretStr) else SecretStr(str(v))
                    for k, v in kwargs["headers"].items()
                }
                d[name] = {**kwargs, "headers": held}
        return self

    @field_serializer("base_url", "gpu_url", "cpu_url")
    def _dump_url(self, v: str | None) -> str | None:
        return redact_url(v) if v else v

    def _check_fields(self, example: str) -> None:
        """The checks of the shared routing fields (the router's own settings are checked
        by :class:`RouterSettings`); normalises ``model_sizes``."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigurationError(f"model must be a non-empty model tag, e.g. {example!r}")
        with configuration_errors(type(self).__name__):
            self.model_sizes = validate_model_sizes(self.model_sizes)
        if not (math.isfinite(self.size_threshold_gb) and self.size_threshold_gb > 0):
            raise ConfigurationError(
                f"size_threshold_gb must be a finite number > 0, got {self.size_threshold_gb!r}"
            )

    def _resolve_backends(
        self, *, client_kwargs: Mapping[str, Any] | None = None, exclusive: Collection[str] = ()
    ) -> list[BackendConfig]:
        """The checked backends the fields name, in order of precedence: ``base_url`` (not
        together with ``backends``, ``gpu_url``, ``cpu_url`` or the ``exclusive`` fields),
        else ``backends``, else ``gpu_url`` and ``cpu_url``. Then ChatOllama-style
        ``client_kwargs`` merge into each, and ``timeouts`` (or, without it, ``timeout`` as
        the first-token and idle timeouts) become the default of each that sets none."""
        check_seconds("timeout", self.timeout, positive=True, optional=True)
        if self.base_url is not None:
            clash = sorted({"backends", "gpu_url", "cpu_url", *exclusive} & self.model_fields_set)
            if clash or self.backends is not None:
                raise ConfigurationError(
                    f"base_url cannot be combined with {clash or ['backends']}: base_url "
                    "configures a single server; list several in backends=[...]"
                )
            url = ollama_host_url(self.base_url, what="base_url")
            configs = coerce_backends([{"name": "default", "base_url": url}])
        elif self.backends is not None:
            configs = coerce_backends(self.backends)
        else:
            configs = coerce_backends(
                backends_from_env({}, gpu_url=self.gpu_url or "", cpu_url=self.cpu_url or "")
            )
        if client_kwargs:
            configs = [with_client_kwargs(c, client_kwargs) for c in configs]
        default_t = self.timeouts
        if default_t is None and self.timeout is not None:
            default_t = Timeouts(first_token=self.timeout, idle=self.timeout)
        if default_t is not None:
            configs = [
                c
                if "timeouts" in c.model_fields_set
                else c.model_copy(update={"timeouts": default_t})
                for c in configs
            ]
        return configs

    def _router_settings(self, **own: Any) -> RouterSettings:
        """One checked :class:`RouterSettings` from the shared fields and the subclass's
        ``own`` ones (named as its fields are)."""
        return router_settings(
            {
                "breaker": self.breaker,
                "probe_ttl": self.probe_ttl,
                "background_probes": self.background_probes,
                **own,
            }
        )

    def _new_router(
        self,
        configs: list[BackendConfig],
        settings: RouterSettings,
        shared_state: SharedState | None = None,
    ) -> Router:
        """The router over ``configs``, with the injected collaborators of the fields."""
        return Router(
            configs,
            settings=settings,
            clock=self.clock or time.monotonic,
            nvml=self.nvml,
            host_memory=self.host_memory,
            shared_state=shared_state,
        )

"""Backend configuration: what an Ollama server is, as plain validated values.

Why separate from the chat model: the CLI, the router and ``smart_chat`` all need the
same answer to "which servers, from which env vars, with which URL", and all need the
same redaction of credentials before a URL reaches a log, a repr or metadata.
"""

from __future__ import annotations

import base64
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx
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

from langchain_contextharbor._secrets import (
    SecretUrl,
    _SecretHeaders,
    hold_secret_url,
    refuse_query_params,
    reveal,
)
from langchain_contextharbor._urls import redact_url, validate_base_url
from langchain_contextharbor.errors import ConfigurationError

__all__ = [
    "DEFAULT_CPU_URL",
    "DEFAULT_GPU_URL",
    "BackendConfig",
    "SecretUrl",
    "Timeouts",
    "backends_from_env",
    "hold_secret_url",
    "ollama_host_url",
    "redact_url",
    "reveal",
    "validate_base_url",
]

DEFAULT_GPU_URL = "http://127.0.0.1:11434"
DEFAULT_CPU_URL = "http://127.0.0.1:11435"
GPU_URL_ENV = "OLLAMA_GPU_URL"
CPU_URL_ENV = "OLLAMA_CPU_URL"
OLLAMA_HOST_ENV = "OLLAMA_HOST"

BackendKind = Literal["gpu", "cpu"]


def _finite_positive(v: float | None, name: str) -> float | None:
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def validation_problems(exc: ValidationError) -> str:
    """Each bad field of ``exc`` as ``field: why``, joined by ``;``, never quoting an input
    (URLs and headers carry secrets). Shared with the models' own configuration errors."""
    return "; ".join(
        f"{'.'.join(str(x) for x in e['loc']) or 'config'}: "
        f"{str(e['msg']).removeprefix('Value error, ')}"
        for e in exc.errors(include_input=False, include_url=False)
    )


class _Checked(BaseModel):
    """A settings value whose bad input raises :class:`ConfigurationError` (still a
    ``ValueError``), as every other setting of the package does, instead of pydantic's own
    ``ValidationError``: callers catch one error type, and its text names the field."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            what = type(self).__name__
            raise ConfigurationError(
                f"invalid {what} configuration: {validation_problems(exc)}"
            ) from None


class Timeouts(_Checked):
    """Client timeouts of one backend, in seconds. ``None`` nowhere: nothing may hang.

    * ``connect`` — TCP/TLS connect; a dead host fails fast.
    * ``first_token`` — from sending the request to the first byte of the answer. It must
      allow for a cold model load (Ollama answers only once the model is loaded), hence
      the generous default.
    * ``idle`` — the longest silence between two chunks once the stream has started.
    * ``probe`` — the whole of a health/status probe (``/api/version``, ``/api/tags``...).
    * ``total`` — optional (off by default, like ChatOllama): the most a whole call may
      take, from its start, however many backends it tries and however steadily a server
      trickles tokens. On expiry the call raises ``DeadlineExceededError``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    connect: float = 2.0
    first_token: float = 120.0
    idle: float = 30.0
    probe: float = 1.5
    total: float | None = None

    @field_validator("connect", "first_token", "idle", "probe")
    @classmethod
    def _positive(cls, v: float, info: Any) -> float:
        out = _finite_positive(v, f"timeouts.{info.field_name}")
        assert out is not None
        return out

    @field_validator("total")
    @classmethod
    def _total(cls, v: float | None) -> float | None:
        return _finite_positive(v, "timeouts.total")


class BackendConfig(_Checked):
    """One Ollama server.

    ``client_kwargs`` go to the httpx clients (``verify``, ``cert``, ``transport``,
    ``trust_env`` ...). ``headers`` are sent on every request and never logged.

    Secrets are held, not stored in the clear: a ``base_url`` with credentials is a
    :class:`SecretUrl` (masked in ``repr``/``str``/``vars()``), headers are ``SecretStr``,
    the clients get them through an auth flow (:attr:`auth`), and a configuration that
    holds any of them refuses to be pickled (``TypeError``; see :class:`SecretUrl`).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True
    )

    name: str
    base_url: str
    kind: BackendKind = "gpu"
    priority: int = 0
    """Lower is preferred among backends of the same kind."""
    max_parallel: int = Field(default=1, ge=1)
    """Requests this server runs at once (Ollama's ``OLLAMA_NUM_PARALLEL``, default 1)."""
    max_memory_gb: float | None = None
    """Capacity for models (GiB) when it cannot be measured: remote servers, AMD/Vulkan."""
    headers: dict[str, SecretStr] = Field(default_factory=dict, repr=False)
    """Sent on every request (``Authorization``, API keys); stored as ``SecretStr`` so no
    dump or repr shows them. Credentials in ``base_url`` become a Basic ``Authorization``
    header; configuring both is an error (which one wins would be a guess)."""
    verify: bool | str = True
    timeouts: Timeouts = Field(default_factory=Timeouts)
    client_kwargs: dict[str, Any] = Field(default_factory=dict, repr=False)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ValueError("backend name must be a non-empty string")
        return v.strip()

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return hold_secret_url(validate_base_url(v, what="backend base_url"))

    @field_validator("max_memory_gb")
    @classmethod
    def _mem(cls, v: float | None) -> float | None:
        return _finite_positive(v, "max_memory_gb")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in v.items():
            value = secret.get_secret_value()
            if not name or any(ord(ch) < 33 or ch == ":" for ch in name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if any((ord(ch) < 32 and ch != "\t") or ord(ch) == 127 for ch in value):
                # The value is a secret more often than not: never echo it.
                raise ValueError(f"header {name!r} has a control character (CR/LF?) in its value")
        return v

    @field_validator("verify")
    @classmethod
    def _verify(cls, v: bool | str) -> bool | str:
        if isinstance(v, str) and not os.path.exists(v):
            raise ValueError(f"verify={v!r}: no such CA bundle file or directory")
        return v

    @model_validator(mode="after")
    def _kwargs(self) -> BackendConfig:
        bad = {"base_url", "host", "headers", "timeout", "auth"} & set(self.client_kwargs)
        if bad:
            raise ValueError(
                f"client_kwargs of backend {self.name!r} may not set {sorted(bad)}; "
                "use the BackendConfig fields (base_url, headers, timeouts) instead"
            )
        refuse_query_params(self.client_kwargs, f"client_kwargs of backend {self.name!r}")
        if httpx.URL(self.base_url).userinfo and any(
            k.lower() == "authorization" for k in self.headers
        ):
            raise ValueError(
                f"backend {self.name!r} has credentials in its base_url and an Authorization "
                "header; configure one of them (the URL's user:password@ is sent as Basic auth)"
            )
        return self

    @field_serializer("base_url")
    def _dump_url(self, v: str) -> str:
        return redact_url(v)

    @field_serializer("client_kwargs")
    def _dump_kwargs(self, v: dict[str, Any]) -> dict[str, str]:
        # Arbitrary objects (transports, auth, certificates): name them, never dump them.
        return {k: "***" for k in v}

    @functools.cached_property
    def plain_url(self) -> str:
        """The base URL without its ``user:password@`` (that goes into a header instead,
        so no URL that httpx logs carries it)."""
        url = httpx.URL(self.base_url)
        if not url.userinfo:
            return self.base_url
        return str(url.copy_with(username=None, password=None)).rstrip("/")

    @property
    def request_headers(self) -> dict[str, str]:
        """The headers to send, in the clear: the configured ones, plus Basic auth from URL
        credentials. Computed on each read, never cached on the object (``vars()`` would
        show it); the clients get them through :attr:`auth`."""
        return {k: v.get_secret_value() for k, v in self._secret_headers().items()}

    def _secret_headers(self) -> dict[str, SecretStr]:
        out = dict(self.headers)
        url = httpx.URL(self.base_url)
        if url.userinfo:
            token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
            out["Authorization"] = SecretStr(f"Basic {token}")
        return out

    @functools.cached_property
    def auth(self) -> httpx.Auth | None:
        """The ``auth=`` of this backend's httpx clients: adds the secret headers to each
        request as it is sent (None: there are none)."""
        headers = self._secret_headers()
        return _SecretHeaders(headers) if headers else None

    def __getstate__(self) -> dict[Any, Any]:
        """Refuse to pickle secrets (headers here; a secret URL refuses by itself)."""
        if self.headers:
            raise TypeError(
                f"backend {self.name!r} has secret headers and is not pickled: a pickle "
                "would hold them in the clear. Build the configuration where it is used"
            )
        return super().__getstate__()

    @functools.cached_property
    def safe_url(self) -> str:
        """The base URL with credentials removed (computed once: it is on the hot path)."""
        return redact_url(self.base_url)

    def scrub(self, text: str) -> str:
        """``text`` with this backend's credentials removed: the URL's userinfo and every
        configured header value (bearer tokens, API keys). For errors, logs and metadata.

        The one scrubber of the package (the CLI's health report uses it too). A secret
        shorter than 3 characters is masked only where it stands as ``userinfo@``: masking
        every "a" or "pw" in a message would make it unreadable and hide nothing."""
        if self.base_url in text:
            text = text.replace(self.base_url, self.safe_url)
        url = httpx.URL(self.base_url)
        if url.userinfo:
            userinfo = url.userinfo.decode(errors="replace")
            text = text.replace(f"{userinfo}@", "***@")
            for s in (userinfo, url.password):
                if s and len(s) >= 3:
                    text = text.replace(s, "***")
        for value in self.request_headers.values():
            for part in (value, *value.split()):
                if len(part) >= 6 and part in text:
                    text = text.replace(part, "***")
        return text

    @functools.cached_property
    def hostport(self) -> str:
        """``host:port`` as ``OLLAMA_HOST`` takes it (for hints such as ``ollama pull``)."""
        u = httpx.URL(self.base_url)
        return f"{u.host}:{u.port or (443 if u.scheme == 'https' else 80)}"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    @property
    def is_local(self) -> bool:
        """Whether the server runs on this host (so NVML and /proc/meminfo describe it)."""
        host = httpx.URL(self.base_url).host
        return host in ("127.0.0.1", "localhost", "::1", "[::1]") or host.startswith("127.")

    def __repr__(self) -> str:  # never show credentials
        return (
            f"BackendConfig(name={self.name!r}, base_url={self.safe_url!r}, kind={self.kind!r}, "
            f"priority={self.priority}, max_parallel={self.max_parallel})"
        )

    __str__ = __repr__


def ollama_host_url(value: str, *, what: str = "OLLAMA_HOST") -> str:
    """A server address as Ollama's own tools read ``OLLAMA_HOST``, as a full URL.

    ``host``, ``host:port``, ``:port`` and ``[::1]:port`` get ``http://`` and the default
    host ``127.0.0.1`` / port ``11434``; a value with a scheme is taken as it is (its port
    defaults to the scheme's). Raises ConfigurationError (credentials never quoted).
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty server address")
    text = value.strip()
    if "://" not in text:
        hostport, slash, path = text.partition("/")
        host, port = hostport, ""
        if hostport.startswith("["):
            close = hostport.find("]")
            host, port = hostport[: close + 1], hostport[close + 1 :].lstrip(":")
        elif hostport.count(":") == 1:
            host, port = hostport.split(":")
        elif ":" in hostport:  # a bare IPv6 address
            host = f"[{hostport}]"
        host = host or "127.0.0.1"
        text = f"http://{host}:{port or 11434}{slash}{path}"
    return validate_base_url(text, what=what)


def default_gpu_url(env: Mapping[str, str] | None = None) -> str:
    """``OLLAMA_GPU_URL``; unset: ``OLLAMA_HOST`` (as the ollama CLI and ChatOllama follow
    it); unset too: ``http://127.0.0.1:11434``. An empty ``OLLAMA_GPU_URL`` stays empty."""
    env = os.environ if env is None else env
    if GPU_URL_ENV in env:
        return env[GPU_URL_ENV]
    host = env.get(OLLAMA_HOST_ENV, "")
    return ollama_host_url(host) if host.strip() else DEFAULT_GPU_URL


def backends_from_env(
    env: Mapping[str, str] | None = None,
    *,
    gpu_url: str | None = None,
    cpu_url: str | None = None,
) -> list[BackendConfig]:
    """The default two backends from ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL``.

    Unset means the default loopback port (for the GPU server: ``OLLAMA_HOST`` first, as
    Ollama's tools read it); set to the empty string disables that backend (for example
    ``OLLAMA_GPU_URL=`` forces CPU only). Explicit arguments win over env.
    """
    env = os.environ if env is None else env
    out: list[BackendConfig] = []
    for name, kind, explicit, var in (
        ("gpu", "gpu", gpu_url, GPU_URL_ENV),
        ("cpu", "cpu", cpu_url, CPU_URL_ENV),
    ):
        if explicit is not None:
            url = explicit
        elif name == "gpu":
            url = default_gpu_url(env)
        else:
            url = env.get(var, DEFAULT_CPU_URL)
        if url is None or not url.strip():
            continue
        try:
            out.append(BackendConfig(name=name, base_url=url, kind=kind))  # type: ignore[arg-type]
        except Exception as exc:
            raise ConfigurationError(f"{var}={redact_url(url)!r} is not usable: {exc}") from None
    return out


def coerce_backends(items: Sequence[BackendConfig | Mapping[str, Any]]) -> list[BackendConfig]:
    """Turn dicts into BackendConfig and reject duplicates (same name or same URL)."""
    out: list[BackendConfig] = []
    for i, item in enumerate(items):
        if isinstance(item, BackendConfig):
            out.append(item)
        elif isinstance(item, Mapping):
            try:
                out.append(BackendConfig(**dict(item)))
            except Exception as exc:
                raise ConfigurationError(f"backends[{i}] is invalid: {exc}") from None
        else:
            raise ConfigurationError(
                f"backends[{i}] must be a BackendConfig or a dict, got {type(item).__name__}"
            )
    names: set[str] = set()
    urls: dict[str, str] = {}
    for b in out:
        if b.name in names:
            raise ConfigurationError(f"duplicate backend name {b.name!r}")
        names.add(b.name)
        key = reveal(b.base_url).lower()
        if key in urls:
            raise ConfigurationError(
                f"backends {urls[key]!r} and {b.name!r} have the same URL {b.safe_url!r}"
            )
        urls[key] = b.name
    if not out:
        raise ConfigurationError(
            "no backend configured: pass backends=[...] or set OLLAMA_GPU_URL / OLLAMA_CPU_URL "
            "(both are set to the empty string, which disables them)"
        )
    return out

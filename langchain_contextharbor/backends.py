"""Backend configuration: what an Ollama server is, as plain validated values.

Why separate from the chat model: the CLI, the router and ``smart_chat`` all need the
same answer to "which servers, from which env vars, with which URL", and all need the
same redaction of credentials before a URL reaches a log, a repr or metadata.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from langchain_contextharbor.errors import ConfigurationError

__all__ = [
    "DEFAULT_CPU_URL",
    "DEFAULT_GPU_URL",
    "BackendConfig",
    "Timeouts",
    "backends_from_env",
    "redact_url",
    "validate_base_url",
]

DEFAULT_GPU_URL = "http://127.0.0.1:11434"
DEFAULT_CPU_URL = "http://127.0.0.1:11435"
GPU_URL_ENV = "OLLAMA_GPU_URL"
CPU_URL_ENV = "OLLAMA_CPU_URL"

BackendKind = Literal["gpu", "cpu"]


def validate_base_url(url: str, *, what: str = "base URL") -> str:
    """Return the URL without a trailing slash, or raise ConfigurationError saying why.

    Accepts ``http``/``https`` URLs with a host and optional port and path prefix.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{what} must be a non-empty string, got {url!r}")
    text = url.strip()
    shown = redact_url(text)
    if "://" not in text:
        raise ConfigurationError(
            f"{what} {shown!r} has no scheme; expected e.g. 'http://127.0.0.1:11434'"
        )
    try:
        parsed = httpx.URL(text)
    except Exception as exc:  # httpx.InvalidURL and friends
        raise ConfigurationError(f"{what} {shown!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ConfigurationError(f"{what} {shown!r}: scheme must be http or https")
    if not parsed.host:
        raise ConfigurationError(f"{what} {shown!r} has no host")
    if any(ch.isspace() for ch in text):
        raise ConfigurationError(f"{what} {shown!r} must not contain whitespace")
    try:
        port = parsed.port
    except Exception:
        raise ConfigurationError(f"{what} {shown!r} has an invalid port") from None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigurationError(f"{what} {shown!r}: port must be 1..65535")
    if parsed.query or parsed.fragment:
        raise ConfigurationError(f"{what} {shown!r} must not have a query or fragment")
    return text.rstrip("/")


def redact_url(url: str) -> str:
    """Remove credentials (``user:password@``) from a URL; safe on malformed input.

    Everything before the last ``@`` is treated as userinfo, even when a ``/``, ``?`` or
    ``#`` appears in it (a password may contain them): over-redacting a URL whose path or
    query has an ``@`` in it is the safe mistake.
    """
    if not isinstance(url, str):
        return "<invalid url>"
    scheme, sep, rest = url.partition("://")
    if not sep:
        # No "://": keep a scheme-like prefix such as "http:/" (a typo) as it is.
        m = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/+(?=[^/])", url)
        scheme, rest = (m.group(0), url[m.end() :]) if m and "@" in url[m.end() :] else ("", url)
        sep = ""
    head, tail = rest, ""
    if "@" in head:
        after = head.rsplit("@", 1)[1]
        lead = "//" if head.startswith("//") else ""
        head = f"{lead}***@{after}"
    out = head + tail
    return f"{scheme}://{out}" if sep else scheme + out


def _finite_positive(v: float | None, name: str) -> float | None:
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


class Timeouts(BaseModel):
    """Client timeouts of one backend, in seconds. ``None`` nowhere: nothing may hang.

    * ``connect`` — TCP/TLS connect; a dead host fails fast.
    * ``first_token`` — from sending the request to the first byte of the answer. It must
      allow for a cold model load (Ollama answers only once the model is loaded), hence
      the generous default.
    * ``idle`` — the longest silence between two chunks once the stream has started.
    * ``probe`` — the whole of a health/status probe (``/api/version``, ``/api/tags``...).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    connect: float = 2.0
    first_token: float = 120.0
    idle: float = 30.0
    probe: float = 1.5

    @field_validator("connect", "first_token", "idle", "probe")
    @classmethod
    def _positive(cls, v: float, info: Any) -> float:
        out = _finite_positive(v, f"timeouts.{info.field_name}")
        assert out is not None
        return out


class BackendConfig(BaseModel):
    """One Ollama server.

    ``client_kwargs`` go to the httpx clients (``verify``, ``cert``, ``transport``,
    ``trust_env`` ...). ``headers`` are sent on every request and never logged.
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
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
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
        return validate_base_url(v, what="backend base_url")

    @field_validator("max_memory_gb")
    @classmethod
    def _mem(cls, v: float | None) -> float | None:
        return _finite_positive(v, "max_memory_gb")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
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
        bad = {"base_url", "host", "headers", "timeout"} & set(self.client_kwargs)
        if bad:
            raise ValueError(
                f"client_kwargs of backend {self.name!r} may not set {sorted(bad)}; "
                "use the BackendConfig fields (base_url, headers, timeouts) instead"
            )
        return self

    @functools.cached_property
    def safe_url(self) -> str:
        """The base URL with credentials removed (computed once: it is on the hot path)."""
        return redact_url(self.base_url)

    def scrub(self, text: str) -> str:
        """``text`` with this backend's credentials removed: the URL's userinfo and every
        configured header value (bearer tokens, API keys). For errors, logs and metadata."""
        if self.base_url in text:
            text = text.replace(self.base_url, self.safe_url)
        userinfo = httpx.URL(self.base_url).userinfo
        if userinfo:
            text = text.replace(userinfo.decode(errors="replace"), "***")
        for value in self.headers.values():
            for part in (value, *value.split()):
                if len(part) >= 6 and part in text:
                    text = text.replace(part, "***")
        return text

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


def backends_from_env(
    env: Mapping[str, str] | None = None,
    *,
    gpu_url: str | None = None,
    cpu_url: str | None = None,
) -> list[BackendConfig]:
    """The default two backends from ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL``.

    Unset means the default loopback port; set to the empty string disables that backend
    (for example ``OLLAMA_GPU_URL=`` forces CPU only). Explicit arguments win over env.
    """
    env = os.environ if env is None else env
    out: list[BackendConfig] = []
    for name, kind, explicit, var, default in (
        ("gpu", "gpu", gpu_url, GPU_URL_ENV, DEFAULT_GPU_URL),
        ("cpu", "cpu", cpu_url, CPU_URL_ENV, DEFAULT_CPU_URL),
    ):
        url = explicit if explicit is not None else env.get(var, default)
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
            except ConfigurationError:
                raise
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
        key = b.base_url.lower()
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

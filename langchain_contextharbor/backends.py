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
import re
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


def validate_base_url(url: str, *, what: str = "base URL") -> str:
    """Return the URL without a trailing slash, or raise ConfigurationError saying why.

    Accepts ``http``/``https`` URLs with a host and optional port and path prefix. No
    message quotes the URL's credentials or query values, nor httpx's own error text
    about them (httpx's "Invalid port: 's3cr3t'" is a password after a ``#``).
    """
    if not isinstance(url, str) or not url.strip():
        shown_bad = "<non-string>" if not isinstance(url, str) else repr(url)
        raise ConfigurationError(f"{what} must be a non-empty string, got {shown_bad}")
    text = url.strip()
    shown = redact_url(text)
    if "://" not in text:
        raise ConfigurationError(
            f"{what} {shown!r} has no scheme; expected e.g. 'http://127.0.0.1:11434'"
        )
    try:
        parsed = httpx.URL(text)
    except Exception:  # httpx.InvalidURL and friends: its text may quote the password
        raise ConfigurationError(
            f"{what} {shown!r} is not a valid URL: {_why_invalid(text)}"
        ) from None
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
    if "@" in text and not parsed.userinfo:
        # An '@' that httpx did not take as the end of credentials: a password with a '/'
        # in it, which would otherwise travel (and be logged) as part of the path.
        raise ConfigurationError(
            f"{what} {shown!r} is not a valid URL: {_why_invalid('http://x:y/@')}"
        )
    return text.rstrip("/")


def _why_invalid(text: str) -> str:
    """httpx's reason a URL is invalid, computed on the redacted URL so it cannot quote a
    secret; when only the original fails, the credentials part is what is malformed."""
    try:
        httpx.URL(redact_url(text))
    except Exception as exc:
        reason = redact_url(str(exc)) if "@" in str(exc) else str(exc)
        return reason.replace(text, redact_url(text))
    return (
        "the credentials part (user:password@) is malformed; percent-encode reserved "
        "characters such as '#', '/', '?' or '@' in the password"
    )


def redact_url(url: str) -> str:
    """Remove credentials from a URL; safe on malformed input.

    ``user:password@`` becomes ``***@`` and every query value and fragment ``***``.
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
    head = rest
    if "@" in head:
        after = head.rsplit("@", 1)[1]
        lead = "//" if head.startswith("//") else ""
        head = f"{lead}***@{after}"
    if "?" in head or "#" in head:
        head = _redact_query(head)
    return f"{scheme}://{head}" if sep else scheme + head


def _redact_query(rest: str) -> str:
    """``host/path?a=1&b#frag`` -> ``host/path?a=***&b=***#***`` (tokens ride in queries)."""
    base, hsep, frag = rest.partition("#")
    path, qsep, query = base.partition("?")
    if qsep:
        parts = [p.split("=", 1)[0] + "=***" if p else p for p in query.split("&")]
        path = f"{path}?{'&'.join(parts)}"
    return f"{path}#***" if hsep and frag else (path + hsep)


class SecretUrl(str):
    """A URL that carries a secret (``user:password@``, a query or a fragment), held so
    that no view of an object shows it: ``repr``, ``str``, ``format`` (f-strings, logging's
    ``%s``/``%r``) and therefore ``vars()``/``pprint`` show :func:`redact_url`'s form.

    Why a ``str`` and not a wrapper like pydantic's ``SecretStr``: the fields holding it
    (``BackendConfig.base_url``, the models' ``base_url``/``gpu_url``/``cpu_url``,
    ``shared_state``) keep their ``str`` type, so comparing, parsing (``httpx.URL``,
    ``redis.Redis.from_url``) and handing one to ``ChatOllama(base_url=...)`` work as
    before; only the ways an object is *shown* are masked. ``get_secret_value()`` returns
    the plain ``str`` (as ``SecretStr`` does).

    Pickling is refused (``TypeError``): a pickle is written to disk or a socket in the
    clear, and one with the secret masked would unpickle into a URL that fails to
    authenticate, far from the cause. Build the configuration in the other process (from
    the environment) instead. A URL without a secret is never a ``SecretUrl``
    (:func:`hold_secret_url` returns it as it is), so it pickles as before. Copies
    (``copy``/``deepcopy``, ``model_copy``) return the same immutable object.
    """

    __slots__ = ()

    def get_secret_value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return repr(redact_url(self.get_secret_value()))

    def __str__(self) -> str:
        return redact_url(self.get_secret_value())

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            f"a URL with credentials ({self}) is not pickled: a pickle would hold them in "
            "the clear. Build the configuration where it is used (e.g. from the environment)"
        )

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(None)

    def __copy__(self) -> SecretUrl:
        return self

    def __deepcopy__(self, memo: Any) -> SecretUrl:
        return self


def hold_secret_url(url: str) -> str:
    """``url`` as a :class:`SecretUrl` when it carries a secret (credentials, a query, a
    fragment), else as it is: what every URL field stores."""
    if type(url) is str and redact_url(url) != url:
        return SecretUrl(url)
    return url


def reveal(url: str) -> str:
    """The plain ``str`` of a URL field, secret or not (for the few places that build a
    connection from it)."""
    return url.get_secret_value() if isinstance(url, SecretUrl) else url


class _SecretHeaders(httpx.Auth):
    """Adds a backend's secret headers to each request as it is sent.

    Why an ``httpx.Auth`` and not the clients' ``headers=``: a client keeps its default
    headers as plain strings (``vars(client)``, and the ``client_kwargs`` of the inner
    ChatOllama that builds it, would show an ``Authorization`` value); an auth flow keeps
    them as ``SecretStr`` until the request leaves. Requests themselves carry the real
    values (the server needs them); errors that reach the caller carry masked copies (see
    :func:`langchain_contextharbor.errors.scrub_exception`)."""

    def __init__(self, headers: Mapping[str, SecretStr]) -> None:
        self._headers = dict(headers)

    def auth_flow(self, request: httpx.Request) -> Any:
        for name, value in self._headers.items():
            request.headers[name] = value.get_secret_value()
        yield request

    def __repr__(self) -> str:
        return f"_SecretHeaders({sorted(self._headers)})"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a backend's secret headers are not pickled")


def refuse_query_params(kwargs: Mapping[str, Any], what: str) -> None:
    """Refuse ``params`` in httpx ``client_kwargs``, as :func:`validate_base_url` refuses a
    query in a URL: httpx logs every request URL, its query included (``INFO``), and its
    errors quote it. Neither the message nor the log shows a value."""
    params = kwargs.get("params")
    if not params:
        return
    try:
        shown = "&".join(f"{k}=***" for k, _ in httpx.QueryParams(params).multi_items())
    except Exception:
        shown = "***"
    raise ConfigurationError(
        f"{what} must not set params (query parameters {shown or 'none'!r}): like a query "
        "in base_url, httpx logs them with every request URL; send a token as a header"
    )


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

"""Request values the way Ollama reads them: options, keep_alive, stop sequences, routes.

Pure functions and tables (no I/O), shared by the endpoints: Go's duration syntax for
``keep_alive``, the option type checks (null values skipped, as Ollama's parser does), the
routes and methods Ollama registers, and the filter that holds back a possible stop sequence.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import secrets
import socket
import string
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from langchain_contextharbor.testing._wire import _go_type, _RequestError

_NS = 1_000_000_000
_FOREVER_NS = 2**63 - 1  # Go's MaxInt64 duration: what a negative keep_alive becomes.
_GIB = 1024**3

_ROUTES: dict[str, frozenset[str]] = {
    "/": frozenset({"GET", "HEAD"}),
    "/api/version": frozenset({"GET", "HEAD"}),
    "/api/tags": frozenset({"GET", "HEAD"}),
    "/api/ps": frozenset({"GET"}),
    "/api/show": frozenset({"POST"}),
    "/api/chat": frozenset({"POST"}),
    "/api/generate": frozenset({"POST"}),
    "/api/embed": frozenset({"POST"}),
    "/api/embeddings": frozenset({"POST"}),
    "/api/delete": frozenset({"DELETE"}),
    "/api/pull": frozenset({"POST"}),
    "/api/create": frozenset({"POST"}),
    "/api/copy": frozenset({"POST"}),
}

_INT_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
        "mirostat",
    }
)
_FLOAT_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "tfs_z",
        "mirostat_tau",
        "mirostat_eta",
    }
)
_THINK_LEVELS = ("high", "medium", "low")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": _NS,
    "m": 60 * _NS,
    "h": 3600 * _NS,
}


def parse_keep_alive(value: Any) -> int | None:
    """Parse a ``keep_alive`` field into nanoseconds (``None`` = not given).

    Numbers are seconds; strings are Go durations (``"5m"``, ``"1h30m"``, ``"-1m"``, ``"0"``).
    Negative means forever. Raises ``_RequestError(400)`` with Go's ``time`` error texts.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise _RequestError(400, "json: cannot unmarshal bool into Go value of type float64")
    if isinstance(value, (int, float)):
        ns = int(value * _NS)
        return _FOREVER_NS if ns < 0 else ns
    if not isinstance(value, str):
        raise _RequestError(400, f"json: cannot unmarshal {_go_type(value)} into Go value")
    text = value
    if text in ("0", "+0", "-0"):
        return 0
    m = re.fullmatch(r"([+-]?)((?:\d*\.?\d+(?:ns|us|µs|μs|ms|s|m|h))+)", text)
    if not m:
        if re.fullmatch(r"[+-]?\d*\.?\d+", text):
            raise _RequestError(400, f'time: missing unit in duration "{text}"')
        raise _RequestError(400, f'time: invalid duration "{text}"')
    total = 0.0
    for num, unit in re.findall(r"(\d*\.?\d+)(ns|us|µs|μs|ms|s|m|h)", m.group(2)):
        total += float(num) * _DURATION_UNITS[unit]
    ns = int(-total if m.group(1) == "-" else total)
    return _FOREVER_NS if ns < 0 else ns


def _validate_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _RequestError(
            400,
            f"json: cannot unmarshal {_go_type(options)} into Go struct field "
            "ChatRequest.options of type map[string]interface {}",
        )
    # Real Ollama's options parser skips nil values (OllamaEmbeddings sends every option it
    # knows, unset ones as null), so a null means "not given", on every endpoint.
    given: dict[str, Any] = {key: val for key, val in options.items() if val is not None}
    for key, val in given.items():
        if key in _INT_OPTIONS and (isinstance(val, bool) or not isinstance(val, (int, float))):
            raise _RequestError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and (isinstance(val, bool) or not isinstance(val, (int, float))):
            raise _RequestError(500, f'option "{key}" must be of type float32')
        if key == "stop" and not (isinstance(val, list) and all(isinstance(s, str) for s in val)):
            raise _RequestError(500, f'option "{key}" must be of type array')
    return given


def _tool_call_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(8))


class _StopFilter:
    """Streams text while holding back anything that could be the start of a stop sequence."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """Add ``text``; return what can be emitted now (``self.hit`` once a stop matched)."""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.hit = self.pending[:cut], "", True
            return out
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        """Whatever is still held back once generation ended without a match."""
        out, self.pending = self.pending, ""
        return out


_REQUEST_TYPES = {
    "/api/chat": "ChatRequest",
    "/api/generate": "GenerateRequest",
    "/api/show": "ShowRequest",
    "/api/embed": "EmbedRequest",
    "/api/embeddings": "EmbeddingRequest",
    "/api/delete": "DeleteRequest",
    "/api/pull": "PullRequest",
    "/api/create": "CreateRequest",
    "/api/copy": "CopyRequest",
}


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.lstrip("v").split("-", 1)[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


@functools.lru_cache(maxsize=64)
def version_at_least(version: str, *minimum: int) -> bool:
    """Whether the advertised Ollama ``version`` is ``minimum`` or later (a version that does
    not parse, a dev build, counts as a current one). What changed when, at the stand-in's
    switch points: 0.12.6 frames an early stream error as JSON and always sends a tool
    call's ``function.index``; 0.12.10 gives tool calls an ``id``; 0.12.11 adds ``logprobs``
    and ``top_logprobs`` (before, like any unknown field, they were ignored)."""
    parsed = _version_tuple(version)
    return not parsed or parsed >= minimum


@functools.lru_cache(maxsize=32)
def early_errors_as_json(version: str) -> bool:
    """Whether Ollama ``version`` answers an error met before any chunk of a stream as a
    plain JSON error (``500 {"error": ...}``, or the runner's status), as 0.12.6 and later do.

    Ollama 0.12.0-0.12.5 marshalled such an error like any other chunk: ``200`` and one
    ``{"error": ...}`` NDJSON line (``streamResponse`` in server/routes.go, changed in
    0.12.6). The stand-in's advertised ``version`` (``/api/version``) is the one switch: a
    version that does not parse (a dev build) counts as a current one.
    """
    return version_at_least(version, 0, 12, 6)


#: Origins Ollama's CORS check always lets through (``envconfig.AllowedOrigins``), besides
#: ``OLLAMA_ORIGINS`` (the stand-in's ``origins``) and browser extensions.
_DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        pattern
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for pattern in (
            f"http://{host}",
            f"https://{host}",
            f"http://{host}:*",
            f"https://{host}:*",
        )
    ),
    *("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"),
)
_EXTENSION_SCHEMES = (
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)
_LOCAL_TLDS = (".localhost", ".local", ".internal")


def _split_host(host_header: str) -> str:
    """``net.SplitHostPort`` of the ``Host`` header, or the header itself when it has no
    port (Go keeps ``[::1]`` bracketed then, and so does this)."""
    if host_header.startswith("["):
        end = host_header.find("]")
        if end > 0 and host_header[end + 1 : end + 2] == ":":
            return host_header[1:end]
        return host_header
    if host_header.count(":") == 1:
        return host_header.split(":", 1)[0]
    return host_header


@functools.lru_cache(maxsize=256)
def host_allowed(host_header: str, bind_host: str) -> bool:
    """Ollama's ``allowedHostsMiddleware``: may a request with this ``Host`` reach a server
    bound to ``bind_host``?

    Only a server bound to a loopback address checks (DNS-rebinding protection); it lets
    through an IP literal that is loopback, private, unspecified or its own, an empty host,
    ``localhost``, the machine's hostname and ``*.localhost`` / ``*.local`` / ``*.internal``.
    Anything else is refused with 403.
    """
    try:
        if not ipaddress.ip_address(bind_host).is_loopback:
            return True
    except ValueError:
        if bind_host.lower() != "localhost":
            return True
    host = _split_host(host_header).lower()
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is not None:
        return bool(addr.is_loopback or addr.is_private or addr.is_unspecified or host == bind_host)
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return host.endswith(_LOCAL_TLDS)


def origin_allowed(origin: str, host_header: str, extra: Sequence[str] = ()) -> bool:
    """Ollama's CORS check (gin-contrib/cors with ``envconfig.AllowedOrigins``): a request
    whose ``Origin`` is not allowed gets 403. No ``Origin``, or the server's own, is not a
    cross-origin request; ``extra`` plays ``OLLAMA_ORIGINS`` (wildcards allowed)."""
    if not origin or origin in (f"http://{host_header}", f"https://{host_header}"):
        return True
    if origin.startswith(_EXTENSION_SCHEMES):
        return True
    return any(fnmatchcase(origin, pattern) for pattern in (*extra, *_DEFAULT_ORIGINS))


def check_top_logprobs(body: dict[str, Any], request_type: str) -> int:
    """``top_logprobs`` as Ollama reads it: an int, 0-20 (400 otherwise), 0 when absent."""
    value = body.get("top_logprobs")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _RequestError(
            400,
            f"json: cannot unmarshal {_go_type(value)} into Go struct field "
            f"{request_type}.top_logprobs of type int",
        )
    if value < 0 or value > 20:
        raise _RequestError(400, "top_logprobs must be between 0 and 20")
    return value

"""Request values the way Ollama reads them: options, keep_alive, stop sequences, routes.

Pure functions and tables (no I/O), shared by the endpoints: Go's duration syntax for
``keep_alive``, the option type checks (null values skipped, as Ollama's parser does), the
routes and methods Ollama registers, and the filter that holds back a possible stop sequence.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
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
}

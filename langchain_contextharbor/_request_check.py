"""What a request's ``options`` can be checked for before anything is sent.

Why locally: Ollama refuses an option of the wrong type (``"num_ctx": "big"``) with the same
500 on every server (``option "num_ctx" must be of type integer``, through
``handleScheduleError``), so sending it only costs a round trip per server and, before the
failover rule learnt to compare answers, counted against each server's health. What
Ollama's own option parser would refuse, and ``num_ctx <= 0`` (which it would take and
then fail on), is refused here with an :class:`~langchain_contextharbor.errors.
InvalidRequestError` (a ``ValueError``) naming the option, what it must be and that nothing
was sent. Unknown names are refused too: Ollama ignores them (it only logs ``invalid
option provided``), so a typo such as ``num_cxt`` would silently change nothing.

The tables are Ollama's ``api.Options``/``api.Runner`` fields (the project's reference
notes, section 1.2) and ollama-python's ``Options`` type, which also keeps names older
servers read. Pure: no I/O, nothing imported from the call path.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from langchain_contextharbor.errors import InvalidRequestError

__all__ = ["OPTION_TYPES", "check_options", "request_num_ctx"]

_INT = "integer"
_FLOAT = "number"
_BOOL = "boolean"
_STRINGS = "list of strings"

OPTION_TYPES: Mapping[str, str] = {
    # runner options (fixed when the model loads)
    "num_ctx": _INT,
    "num_batch": _INT,
    "num_gpu": _INT,
    "main_gpu": _INT,
    "num_thread": _INT,
    "use_mmap": _BOOL,
    # older runner options, still in ollama-python's Options (ignored by newer servers)
    "numa": _BOOL,
    "low_vram": _BOOL,
    "f16_kv": _BOOL,
    "logits_all": _BOOL,
    "vocab_only": _BOOL,
    "use_mlock": _BOOL,
    "embedding_only": _BOOL,
    "penalize_newline": _BOOL,
    # predict options
    "num_keep": _INT,
    "seed": _INT,
    "num_predict": _INT,
    "top_k": _INT,
    "repeat_last_n": _INT,
    "mirostat": _INT,
    "top_p": _FLOAT,
    "min_p": _FLOAT,
    "typical_p": _FLOAT,
    "temperature": _FLOAT,
    "repeat_penalty": _FLOAT,
    "presence_penalty": _FLOAT,
    "frequency_penalty": _FLOAT,
    "tfs_z": _FLOAT,
    "mirostat_tau": _FLOAT,
    "mirostat_eta": _FLOAT,
    "stop": _STRINGS,
}
"""Every option name Ollama defines, with the JSON type its parser requires."""


def _refuse(what: str) -> InvalidRequestError:
    return InvalidRequestError(f"{what}; nothing was sent")


def _fits(kind: str, value: Any) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STRINGS:
        return isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value)
    # Ollama's JSON numbers: an integer option takes any number (Go truncates a float64).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def check_options(options: Any) -> None:
    """Raise InvalidRequestError when ``options`` holds what Ollama would refuse (or
    silently ignore, for an unknown name); None values are "not given", as Ollama reads
    them."""
    if options is None:
        return
    if not isinstance(options, Mapping):
        from ollama import Options  # typed by pydantic already: only num_ctx's range is left

        if isinstance(options, Options):
            check_options(options.model_dump(exclude_none=True))
            return
        raise _refuse(f"options must be a dict of Ollama options, got {type(options).__name__}")
    for key, value in options.items():
        kind = OPTION_TYPES.get(key) if isinstance(key, str) else None
        if kind is None:
            close = difflib.get_close_matches(str(key), OPTION_TYPES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _refuse(f"options[{key!r}] is not an Ollama option{hint}")
        if value is None:
            continue
        if not _fits(kind, value):
            shown = repr(value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            raise _refuse(
                f"options[{key!r}] must be a finite {kind}, got {shown} ({type(value).__name__})"
                if kind in (_INT, _FLOAT)
                else f"options[{key!r}] must be a {kind}, got {shown} ({type(value).__name__})"
            )
    num_ctx = options.get("num_ctx")
    if num_ctx is not None and num_ctx < 1:
        raise _refuse(f"options['num_ctx'] must be > 0, got {num_ctx!r}")


def request_num_ctx(options: Any, default: int) -> int:
    """The context size a call's ``options`` ask for (``default`` when they name none),
    after :func:`check_options`: the one step a call with ``options=`` takes before it is
    planned, so a refused request never reaches a plan or a server."""
    check_options(options)
    if options is not None:
        num_ctx = options.get("num_ctx") if isinstance(options, Mapping) else options.num_ctx
        if num_ctx is not None:
            return int(num_ctx)
    return default

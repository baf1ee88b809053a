"""Table-driven tests for ``classify_exception``, the one place that reads errors.

Every case builds the REAL exception object that ollama-python, httpx, the stdlib,
pydantic or langchain-core raise for that fault (see the project's reference notes on
what ChatOllama raises and on Ollama's error texts), never a look-alike.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import ollama
import pydantic
import pytest
from langchain_core.exceptions import OutputParserException

from langchain_contextharbor import (
    Classification,
    EmptyResponseError,
    FailoverCategory,
    StreamInterruptedError,
    classify_exception,
)

Cat = FailoverCategory

# Ollama's exact error texts (reference: ollama-api.md section 4.2).
OOM_SYSTEM_MEMORY = "model requires more system memory (40.0 GiB) than is available (12.0 GiB)"
OOM_CUDA = "llama runner process has terminated: CUDA error: out of memory"
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
NO_TOOLS = "registry.ollama.ai/library/gemma:2b does not support tools"
RUNNER_CRASHED = "an error was encountered while running the model"
_REQ = httpx.Request("POST", "http://127.0.0.1:11434/api/chat")


def _validation_error() -> pydantic.ValidationError:
    try:
        pydantic.TypeAdapter(int).validate_python("not a number")
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


def _json_error() -> json.JSONDecodeError:
    try:
        json.loads('{"model": "x", "message": ')
    except json.JSONDecodeError as exc:
        return exc
    raise AssertionError("unreachable")


def _status_error(status: int, body: str) -> httpx.HTTPStatusError:
    resp = httpx.Response(status, request=_REQ, text=body)
    return httpx.HTTPStatusError(f"{status}", request=_REQ, response=resp)


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], BaseException]
    category: FailoverCategory
    failover: bool
    counts: bool
    status: int | None = None


CASES = [
    # --- ollama.ResponseError: HTTP errors before the stream, and {"error"} lines mid-stream
    Case(
        "404 model not pulled",
        lambda: ollama.ResponseError("model 'x' not found", 404),
        Cat.MODEL_NOT_FOUND,
        True,
        False,
        404,
    ),
    Case(
        "404 embed-style not found",
        lambda: ollama.ResponseError('model "x" not found, try pulling it first', 404),
        Cat.MODEL_NOT_FOUND,
        True,
        False,
        404,
    ),
    Case(
        "404 JSON body",
        lambda: ollama.ResponseError('{"error": "model \'x\' not found"}', 404),
        Cat.MODEL_NOT_FOUND,
        True,
        False,
        404,
    ),
    Case(
        "500 system memory OOM",
        lambda: ollama.ResponseError(OOM_SYSTEM_MEMORY, 500),
        Cat.OUT_OF_MEMORY,
        True,
        False,
        500,
    ),
    Case(
        "500 CUDA OOM",
        lambda: ollama.ResponseError(OOM_CUDA, 500),
        Cat.OUT_OF_MEMORY,
        True,
        False,
        500,
    ),
    Case(
        "500 cudaMalloc failed",
        lambda: ollama.ResponseError(
            "llama runner process has terminated: cudaMalloc failed: out of memory", 500
        ),
        Cat.OUT_OF_MEMORY,
        True,
        False,
        500,
    ),
    Case(
        "500 layout",
        lambda: ollama.ResponseError("memory layout cannot be allocated with num_gpu = 33", 500),
        Cat.OUT_OF_MEMORY,
        True,
        False,
        500,
    ),
    Case(
        "500 commit",
        lambda: ollama.ResponseError("failed to commit memory for model", 500),
        Cat.OUT_OF_MEMORY,
        True,
        False,
        500,
    ),
    Case(
        "500 runner exit status",
        lambda: ollama.ResponseError("llama runner process has terminated: exit status 2", 500),
        Cat.SERVER_ERROR,
        True,
        True,
        500,
    ),
    Case(
        "500 runner stopped",
        lambda: ollama.ResponseError(
            "model runner has unexpectedly stopped, this may be due to resource limitations or an "
            "internal error, check ollama server logs for details",
            500,
        ),
        Cat.SERVER_ERROR,
        True,
        True,
        500,
    ),
    Case(
        "502 proxy",
        lambda: ollama.ResponseError("Bad Gateway", 502),
        Cat.SERVER_ERROR,
        True,
        True,
        502,
    ),
    Case(
        "503 queue full", lambda: ollama.ResponseError(QUEUE_FULL, 503), Cat.BUSY, True, False, 503
    ),
    Case(
        "501 chat model asked to embed",
        lambda: ollama.ResponseError("this model does not support embeddings", 501),
        Cat.FATAL,
        False,
        False,
        501,
    ),
    Case(
        "499 cancelled while queued",
        lambda: ollama.ResponseError("request canceled", 499),
        Cat.CANCELLED,
        False,
        False,
        499,
    ),
    Case(
        "401 proxy auth",
        lambda: ollama.ResponseError("unauthorized", 401),
        Cat.SERVER_ERROR,
        True,
        True,
        401,
    ),
    Case("403 proxy", lambda: ollama.ResponseError("", 403), Cat.SERVER_ERROR, True, True, 403),
    Case(
        "429 proxy rate limit",
        lambda: ollama.ResponseError("too many requests", 429),
        Cat.SERVER_ERROR,
        True,
        True,
        429,
    ),
    Case(
        "400 tools unsupported",
        lambda: ollama.ResponseError(NO_TOOLS, 400),
        Cat.FATAL,
        False,
        False,
        400,
    ),
    Case(
        "400 context too long",
        lambda: ollama.ResponseError("the input length exceeds the context length", 400),
        Cat.FATAL,
        False,
        False,
        400,
    ),
    Case(
        "400 missing model",
        lambda: ollama.ResponseError("model is required", 400),
        Cat.FATAL,
        False,
        False,
        400,
    ),
    Case(
        "-1 mid-stream error line",
        lambda: ollama.ResponseError(RUNNER_CRASHED, -1),
        Cat.STREAM_ERROR,
        True,
        True,
        -1,
    ),
    Case(
        "-1 mid-stream CUDA OOM",
        lambda: ollama.ResponseError(f"{RUNNER_CRASHED}: CUDA error: out of memory", -1),
        Cat.OUT_OF_MEMORY,
        True,
        False,
        -1,
    ),
    # --- httpx, raw on the streaming path
    Case(
        "httpx.ConnectError refused",
        lambda: httpx.ConnectError("[Errno 111] Connection refused", request=_REQ),
        Cat.CONNECT,
        True,
        True,
    ),
    Case(
        "httpx.ConnectError async",
        lambda: httpx.ConnectError("All connection attempts failed"),
        Cat.CONNECT,
        True,
        True,
    ),
    Case(
        "httpx.ConnectTimeout", lambda: httpx.ConnectTimeout("timed out"), Cat.CONNECT, True, True
    ),
    Case(
        "httpx.ReadTimeout",
        lambda: httpx.ReadTimeout("timed out", request=_REQ),
        Cat.TIMEOUT,
        True,
        True,
    ),
    Case("httpx.ReadTimeout async empty", lambda: httpx.ReadTimeout(""), Cat.TIMEOUT, True, True),
    Case("httpx.WriteTimeout", lambda: httpx.WriteTimeout(""), Cat.TIMEOUT, True, True),
    Case("httpx.PoolTimeout", lambda: httpx.PoolTimeout(""), Cat.TIMEOUT, True, True),
    Case(
        "httpx.RemoteProtocolError",
        lambda: httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body (incomplete chunked read)"
        ),
        Cat.TRANSPORT,
        True,
        True,
    ),
    Case(
        "httpx.ReadError",
        lambda: httpx.ReadError("[Errno 104] Connection reset by peer"),
        Cat.TRANSPORT,
        True,
        True,
    ),
    Case(
        "httpx.HTTPStatusError 502",
        lambda: _status_error(502, "bad gateway"),
        Cat.SERVER_ERROR,
        True,
        True,
        502,
    ),
    Case(
        "httpx.HTTPStatusError 503",
        lambda: _status_error(503, QUEUE_FULL),
        Cat.BUSY,
        True,
        False,
        503,
    ),
    Case(
        "httpx.HTTPStatusError 500 OOM",
        lambda: _status_error(500, json.dumps({"error": OOM_SYSTEM_MEMORY})),
        Cat.OUT_OF_MEMORY,
        True,
        False,
        500,
    ),
    Case(
        "httpx.HTTPStatusError 404",
        lambda: _status_error(404, "404 page not found"),
        Cat.MODEL_NOT_FOUND,
        True,
        False,
        404,
    ),
    Case(
        "httpx.HTTPStatusError 400",
        lambda: _status_error(400, "missing request body"),
        Cat.FATAL,
        False,
        False,
        400,
    ),
    # --- builtins (non-streaming ollama.Client path, validate_model_on_init, sockets)
    Case(
        "builtin ConnectionError",
        lambda: ConnectionError(
            "Failed to connect to Ollama. Please check that Ollama is downloaded, running and "
            "accessible. https://ollama.com/download"
        ),
        Cat.CONNECT,
        True,
        True,
    ),
    Case(
        "ConnectionRefusedError",
        lambda: ConnectionRefusedError(111, "Connection refused"),
        Cat.CONNECT,
        True,
        True,
    ),
    Case(
        "ConnectionResetError", lambda: ConnectionResetError(104, "reset"), Cat.CONNECT, True, True
    ),
    Case("TimeoutError", lambda: TimeoutError("timed out"), Cat.TIMEOUT, True, True),
    Case(
        "socket.timeout", lambda: __import__("socket").timeout("timed out"), Cat.TIMEOUT, True, True
    ),
    # --- protocol garbage
    Case("json.JSONDecodeError", _json_error, Cat.MALFORMED, True, True),
    Case("EmptyResponseError", lambda: EmptyResponseError("gpu"), Cat.FATAL, False, False),
    # --- the request itself is wrong: another backend will not help
    Case("pydantic ValidationError", _validation_error, Cat.FATAL, False, False),
    Case(
        "OutputParserException",
        lambda: OutputParserException("Invalid json output: {"),
        Cat.FATAL,
        False,
        False,
    ),
    Case("ValueError", lambda: ValueError("bad argument"), Cat.FATAL, False, False),
    Case("TypeError", lambda: TypeError("bad type"), Cat.FATAL, False, False),
    Case("KeyError", lambda: KeyError("x"), Cat.FATAL, False, False),
    Case(
        "StreamInterruptedError",
        lambda: StreamInterruptedError(
            backend="gpu",
            url="http://h",
            delivered_chunks=2,
            delivered_chars=9,
            cause=httpx.RemoteProtocolError("cut"),
        ),
        Cat.FATAL,
        False,
        False,
    ),
    # --- the caller gave up: never retried, never blamed on the backend
    Case("asyncio.CancelledError", asyncio.CancelledError, Cat.CANCELLED, False, False),
    Case("KeyboardInterrupt", KeyboardInterrupt, Cat.CANCELLED, False, False),
    Case("SystemExit", lambda: SystemExit(1), Cat.CANCELLED, False, False),
    Case("GeneratorExit", GeneratorExit, Cat.CANCELLED, False, False),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_classification_table(case: Case) -> None:
    exc = case.make()
    got = classify_exception(exc)
    assert got == Classification(case.category, case.failover, case.counts, case.status)
    assert got.is_oom is (case.category is Cat.OUT_OF_MEMORY)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: asyncio.TimeoutError(), id="asyncio.TimeoutError"),
        pytest.param(
            lambda: __import__("concurrent.futures").futures.TimeoutError(),
            id="concurrent.futures.TimeoutError",
        ),
    ],
)
def test_asyncio_and_futures_timeouts_are_timeouts(make: Callable[[], BaseException]) -> None:
    got = classify_exception(make())
    assert (got.category, got.failover, got.counts_against_backend) == (Cat.TIMEOUT, True, True)


def test_queue_full_text_has_two_spaces() -> None:
    """The 503 text is Ollama's verbatim (two spaces); the status alone decides."""
    assert "again.  maximum" in QUEUE_FULL
    assert (
        classify_exception(ollama.ResponseError(QUEUE_FULL.replace("  ", " "), 503)).category
        is Cat.BUSY
    )


def test_oom_markers_are_case_insensitive() -> None:
    exc = ollama.ResponseError(OOM_SYSTEM_MEMORY.upper(), 500)
    assert classify_exception(exc).is_oom


def test_oom_text_with_a_4xx_status_is_not_oom() -> None:
    """Memory words in a request error (400) must not demote the backend."""
    exc = ollama.ResponseError("prompt mentions out of memory", 400)
    assert classify_exception(exc).category is Cat.FATAL


def test_exception_subclasses_follow_their_base() -> None:
    class MyConnectError(httpx.ConnectError):
        pass

    class MyResponseError(ollama.ResponseError):
        pass

    assert classify_exception(MyConnectError("x")).category is Cat.CONNECT
    assert classify_exception(MyResponseError(QUEUE_FULL, 503)).category is Cat.BUSY


def test_chained_cause_is_not_looked_through() -> None:
    """Only the exception itself counts: a ValueError caused by a ConnectError is fatal."""
    try:
        try:
            raise httpx.ConnectError("refused")
        except httpx.ConnectError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as exc:
        assert classify_exception(exc).category is Cat.FATAL


def test_classification_is_frozen_and_categories_are_strings() -> None:
    c = classify_exception(httpx.ReadTimeout(""))
    with pytest.raises(AttributeError):
        c.failover = False  # type: ignore[misc]
    assert Cat.OUT_OF_MEMORY.value == "out_of_memory"
    assert Cat("busy") is Cat.BUSY
    assert {m.value for m in Cat} == {
        "connect",
        "timeout",
        "transport",
        "server_error",
        "out_of_memory",
        "busy",
        "model_not_found",
        "stream_error",
        "malformed",
        "fatal",
        "cancelled",
    }


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_failover_and_counting_invariants(case: Case) -> None:
    """Nothing that is not retried may feed the breaker; OOM/404/503 never feed it."""
    got = classify_exception(case.make())
    if not got.failover:
        assert not got.counts_against_backend
    if got.category in (Cat.OUT_OF_MEMORY, Cat.MODEL_NOT_FOUND, Cat.BUSY):
        assert got.failover and not got.counts_against_backend


def test_status_error_from_unread_streaming_response_does_not_raise() -> None:
    resp = httpx.Response(502, request=_REQ, stream=httpx.ByteStream(b"bad gateway"))
    with pytest.raises(httpx.HTTPStatusError) as info:
        resp.raise_for_status()
    got = classify_exception(info.value)
    assert (got.category, got.failover, got.status_code) == (Cat.SERVER_ERROR, True, 502)

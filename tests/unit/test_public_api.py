"""Lock the public API (``langchain_contextharbor.__all__``) and the typed errors it exports.

Adding or removing a public name is a decision: update EXPECTED here in the same change.
"""

from __future__ import annotations

import importlib
import pickle
import re

import httpx
import pytest

import langchain_contextharbor as pkg
from langchain_contextharbor import (
    AllBackendsFailedError,
    AttemptRecord,
    ConfigurationError,
    ContextHarborError,
    EmptyResponseError,
    ModelNotAvailableError,
    NoBackendAvailableError,
    SkipRecord,
    StreamInterruptedError,
)

EXPECTED = {
    # constants
    "ABANDONED_EVENT",
    "DEFAULT_CPU_URL",
    "DEFAULT_GPU_URL",
    "DEFAULT_MODEL_SIZES",
    # the chat model and its configuration
    "HybridChatOllama",
    "BackendConfig",
    "Timeouts",
    "TruncatedStreamError",
    "BreakerPolicy",
    "backends_from_env",
    "ollama_host_url",
    "redact_url",
    # routing, pure
    "BackendSnapshot",
    "Candidate",
    "LoadedModel",
    "RoutePlan",
    "RoutePolicy",
    "RouteRequest",
    "SpeedEstimate",
    "SpeedPrior",
    "estimate_finish",
    "plan_route",
    # failover
    "CircuitBreaker",
    "Classification",
    "FailoverCategory",
    "classify_exception",
    # errors
    "AllBackendsFailedError",
    "AllBackendsUnreachableError",
    "DeadlineExceededError",
    "AttemptRecord",
    "ConfigurationError",
    "ContextHarborError",
    "EmptyResponseError",
    "InvalidRequestError",
    "ModelNotAvailableError",
    "NoBackendAvailableError",
    "RequestRejectedError",
    "SkipRecord",
    "StreamInterruptedError",
    # embeddings (the RAG half) and their errors
    "HybridOllamaEmbeddings",
    "BatchRecord",
    "EmbeddingDigestMismatchError",
    "EmbeddingInputError",
    # health and inventory
    "BackendHealth",
    "check_backends",
    "health_report",
    "list_models",
    "models_on_one_backend",
    "preview_route",
    "resolve_backends",
    # the smart_chat helper, its streaming forms and its documented default instance
    "get_default_model",
    "reset_default_model",
    "smart_chat",
    "smart_chat_stream",
    "asmart_chat_stream",
    # metadata
    "__version__",
}


def _isort_key(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 enforces: SCREAMING_CASE, then CamelCase, then the rest,
    each in natural order."""
    group = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return group, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def test_all_is_exactly_the_expected_set() -> None:
    got = set(pkg.__all__)
    assert got - EXPECTED == set(), "new public names: add them to EXPECTED deliberately"
    assert EXPECTED - got == set(), "public names were removed"


def test_all_has_no_duplicates_and_is_sorted() -> None:
    assert len(pkg.__all__) == len(set(pkg.__all__))
    assert list(pkg.__all__) == sorted(pkg.__all__, key=_isort_key)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_name_is_importable(name: str) -> None:
    module = importlib.import_module("langchain_contextharbor")
    assert getattr(module, name) is not None
    ns: dict[str, object] = {}
    exec(f"from langchain_contextharbor import {name}", ns)
    assert ns[name] is getattr(module, name)


def test_star_import_gives_exactly_all() -> None:
    ns: dict[str, object] = {}
    exec("from langchain_contextharbor import *", ns)
    ns.pop("__builtins__", None)
    assert set(ns) == set(pkg.__all__)


def test_no_private_names_exported() -> None:
    assert [n for n in pkg.__all__ if n.startswith("_") and n != "__version__"] == []


def test_version_is_a_version_string() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([a-z0-9.+-]*)?", pkg.__version__)


@pytest.mark.parametrize(
    "module",
    ["backends", "breaker", "chat_models", "classify", "embeddings", "errors", "routing"],
)
def test_submodule_all_names_exist(module: str) -> None:
    mod = importlib.import_module(f"langchain_contextharbor.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ lists missing {name!r}"


# ----------------------------------------------------------------------------------- errors

ATTEMPTS = [
    AttemptRecord(
        "gpu",
        "http://***@127.0.0.1:11434",
        "connect",
        "ConnectError",
        "[Errno 111] Connection refused",
        1.23456,
    ),
    AttemptRecord(
        "cpu",
        "http://127.0.0.1:11435",
        "out_of_memory",
        "ResponseError",
        "model requires more system memory (40.0 GiB) than is available (12.0 GiB)",
        2500.0,
        delivered_chunks=0,
    ),
]
SKIPS = [SkipRecord("remote", "https://gpu.lan", "circuit open, trial call in 3.2s")]


def test_hierarchy() -> None:
    for cls in (
        ConfigurationError,
        EmptyResponseError,
        StreamInterruptedError,
        AllBackendsFailedError,
        NoBackendAvailableError,
        ModelNotAvailableError,
    ):
        assert issubclass(cls, ContextHarborError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(NoBackendAvailableError, AllBackendsFailedError)
    assert issubclass(ModelNotAvailableError, AllBackendsFailedError)
    assert not issubclass(AllBackendsFailedError, ValueError)
    assert not issubclass(StreamInterruptedError, AllBackendsFailedError)


def test_all_backends_failed_lists_every_attempt_and_skip() -> None:
    e1, e2 = httpx.ConnectError("refused"), RuntimeError("oom")
    err = AllBackendsFailedError("llama3.1:8b", ATTEMPTS, SKIPS, [e1, e2], hint="try later")
    lines = str(err).splitlines()
    assert lines == [
        "all backends failed for model 'llama3.1:8b' (2 attempt(s), 1 skipped)",
        "  - gpu (http://***@127.0.0.1:11434): ConnectError [connect]: "
        "[Errno 111] Connection refused",
        "  - cpu (http://127.0.0.1:11435): ResponseError [out_of_memory]: model requires more "
        "system memory (40.0 GiB) than is available (12.0 GiB)",
        "  - remote (https://gpu.lan): skipped: circuit open, trial call in 3.2s",
        "  hint: try later",
    ]
    assert (err.model, err.attempts, err.skipped, err.exceptions, err.hint) == (
        "llama3.1:8b",
        ATTEMPTS,
        SKIPS,
        [e1, e2],
        "try later",
    )
    assert isinstance(err.attempts, list) and err.attempts is not ATTEMPTS


def test_all_backends_failed_without_anything() -> None:
    err = AllBackendsFailedError("m", [])
    assert str(err) == "all backends failed for model 'm' (0 attempt(s), 0 skipped)"
    assert (err.skipped, err.exceptions, err.hint) == ([], [], None)


def test_subclass_headlines() -> None:
    no = NoBackendAvailableError("m", [], SKIPS)
    assert str(no).splitlines()[0] == "no backend available for model 'm' (0 attempt(s), 1 skipped)"
    missing = ModelNotAvailableError(
        "m", ATTEMPTS[:1], hint="pull it first: OLLAMA_HOST=127.0.0.1:11434 ollama pull m  (gpu)"
    )
    text = str(missing)
    assert text.startswith("model 'm' is not available on any backend (1 attempt(s), 0 skipped)")
    assert text.endswith("  hint: pull it first: OLLAMA_HOST=127.0.0.1:11434 ollama pull m  (gpu)")


def test_chaining_with_raise_from() -> None:
    cause = httpx.ReadTimeout("")
    with pytest.raises(AllBackendsFailedError) as info:
        try:
            raise cause
        except httpx.ReadTimeout as exc:
            raise AllBackendsFailedError("m", ATTEMPTS, exceptions=[exc]) from exc
    assert info.value.__cause__ is cause
    assert info.value.exceptions == [cause]


def test_all_backends_failed_chains_the_last_exception_itself() -> None:
    e1, e2 = httpx.ConnectError("refused"), httpx.ReadTimeout("")
    assert AllBackendsFailedError("m", ATTEMPTS, exceptions=[e1, e2]).__cause__ is e2


def test_stream_interrupted_message_and_fields() -> None:
    cause = httpx.RemoteProtocolError("peer closed connection")
    err = StreamInterruptedError(
        backend="gpu",
        url="http://127.0.0.1:11434",
        delivered_chunks=3,
        delivered_chars=17,
        cause=cause,
    )
    assert str(err) == (
        "stream from backend 'gpu' (http://127.0.0.1:11434) failed after 3 chunk(s) / "
        "17 character(s) were delivered: RemoteProtocolError: peer closed connection"
    )
    assert (err.backend, err.url, err.delivered_chunks, err.delivered_chars) == (
        "gpu",
        "http://127.0.0.1:11434",
        3,
        17,
    )


def test_empty_response_error() -> None:
    err = EmptyResponseError("cpu")
    assert str(err) == "No data received from Ollama stream."  # ChatOllama's text
    assert err.backend == "cpu"
    assert isinstance(err, ValueError)  # what ChatOllama raises for an empty answer


def test_attempt_and_skip_records() -> None:
    a = ATTEMPTS[0]
    assert a.as_dict() == {
        "backend": "gpu",
        "url": "http://***@127.0.0.1:11434",
        "category": "connect",
        "error_class": "ConnectError",
        "message": "[Errno 111] Connection refused",
        "elapsed_ms": 1.235,
        "delivered_chunks": 0,
    }
    assert a.describe() == (
        "gpu (http://***@127.0.0.1:11434): ConnectError [connect]: [Errno 111] Connection refused"
    )
    assert (
        SKIPS[0].describe() == "remote (https://gpu.lan): skipped: circuit open, trial call in 3.2s"
    )
    with pytest.raises(AttributeError):
        a.backend = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: AllBackendsFailedError("m", ATTEMPTS, SKIPS, hint="h"), id="all"),
        pytest.param(lambda: NoBackendAvailableError("m", [], SKIPS), id="none-available"),
        pytest.param(
            lambda: ModelNotAvailableError("m", ATTEMPTS, hint="pull"), id="not-available"
        ),
        pytest.param(
            lambda: StreamInterruptedError(
                backend="gpu",
                url="http://h",
                delivered_chunks=1,
                delivered_chars=2,
                cause=ValueError("x"),
            ),
            id="stream-interrupted",
        ),
        pytest.param(lambda: EmptyResponseError("gpu"), id="empty"),
    ],
)
def test_errors_survive_pickle(make: object) -> None:
    err = make()  # type: ignore[operator]
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert vars(back) == vars(err)

"""Request faults are the caller's, and the why is visible (issue 18 items 3 and 6).

Over real HTTP against two stand-ins: a request both servers refuse alike raises the
request's error and moves no circuit, so the next valid calls route as before; a server
that fails what another one serves is still counted against; an answer that did not come
from the plan's first choice says ``fallback: True``, and an outage is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from ollama import ResponseError

from langchain_contextharbor import (
    AllBackendsFailedError,
    BackendConfig,
    HybridChatOllama,
    HybridOllamaEmbeddings,
    InvalidRequestError,
    RequestRejectedError,
)
from langchain_contextharbor._request_check import check_options, request_num_ctx
from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"  # the pair's model (tests/hybrid/conftest.py)
Pair = tuple[OllamaStandIn, OllamaStandIn]


def _circuits(model: HybridChatOllama) -> dict[str, str]:
    return {name: s["circuit"] for name, s in model.stats().items()}


# ---------------------------------------------------------------- item 3: bad requests
def test_a_bad_option_changes_no_routing(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    """The issue's case: ``options={"num_ctx": "big"}``. On the base commit both stand-ins
    refused it (Ollama's 500 ``option "num_ctx" must be of type integer``), which counted as
    server_error on both and opened both circuits: the next valid call failed with
    NoBackendAvailableError. Now it is the request's error (refused alike by both servers,
    or locally before sending once chat_models calls the check) and routing is unchanged."""
    _gpu, _cpu = pair
    model = make_model()
    with pytest.raises(InvalidRequestError) as info:
        model.invoke("hi", options={"num_ctx": "big"})
    assert isinstance(info.value, ValueError) and "num_ctx" in str(info.value)
    assert _circuits(model) == {"gpu": "closed", "cpu": "closed"}
    for _ in range(3):  # later valid calls route exactly as before the bad one
        msg = model.invoke("hello")
        meta = msg.response_metadata["contextharbor"]
        assert (meta["backend"], meta["fallback"], meta["attempts"]) == ("gpu", False, [])
    assert _circuits(model) == {"gpu": "closed", "cpu": "closed"}


def test_ollamas_refusal_repeated_by_the_other_server_is_the_requests_error(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    """Ollama's own refusal of a bad option, as both stand-ins send it (injected, so the
    request passes any local check): the request's error, typed, with both attempts."""
    _gpu, _cpu = pair
    model = make_model()
    text = 'option "num_ctx" must be of type integer'
    for srv in pair:
        srv.inject(Fault.HTTP_ERROR, status=500, message=text, count=1)
    with pytest.raises(RequestRejectedError) as info:
        model.invoke("hi")
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, InvalidRequestError)
    assert isinstance(err, ResponseError) and (err.status_code, err.error) == (500, text)
    assert [(a.backend, a.category) for a in err.attempts] == [
        ("gpu", "server_error"),
        ("cpu", "server_error"),
    ]
    assert "the request's fault, no circuit changed" in str(err)
    assert _circuits(model) == {"gpu": "closed", "cpu": "closed"}
    # The attempts are still counted (stats), only no breaker moved.
    assert model.stats()["gpu"]["failures"]["server_error"] == 1
    meta = model.invoke("hello").response_metadata["contextharbor"]
    assert (meta["backend"], meta["fallback"]) == ("gpu", False)


def test_the_same_error_answer_from_both_servers_is_the_requests_stream_and_async(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    """The same 500 text from both servers (with each server's own address in it, which is
    not part of the comparison) is the request's error for stream and ainvoke too."""
    _gpu, _cpu = pair
    model = make_model()
    for srv in pair:
        text = f"invalid format: schema rejected by runner at {srv.url.removeprefix('http://')}"
        srv.inject(Fault.HTTP_ERROR, status=500, message=text)
    with pytest.raises(RequestRejectedError) as info:
        list(model.stream("hi"))
    assert [a.backend for a in info.value.attempts] == ["gpu", "cpu"]
    assert "<address>" not in str(info.value)  # the message is the server's, not the key
    with pytest.raises(RequestRejectedError):
        asyncio.run(model.ainvoke("hi"))
    assert _circuits(model) == {"gpu": "closed", "cpu": "closed"}
    for srv in pair:
        srv.clear_faults()
    assert model.invoke("ok").response_metadata["backend"] == "gpu"


def test_a_server_failing_what_the_other_serves_is_still_counted(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    """The deferred count: the GPU's 500 waits for another answer; the CPU serves the same
    request, so the GPU's failure was the GPU's and its circuit opens (as before)."""
    gpu, _cpu = pair
    model = make_model()
    gpu.inject(Fault.HTTP_ERROR, status=500, count=1, message="llama runner terminated")
    msg = model.invoke("hi")
    meta = msg.response_metadata["contextharbor"]
    assert meta["backend"] == "cpu" and meta["fallback"] is True
    assert _circuits(model) == {"gpu": "open", "cpu": "closed"}


def test_different_error_answers_count_against_both(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, cpu = pair
    model = make_model()
    gpu.inject(Fault.HTTP_ERROR, status=500, message="llama runner process has terminated")
    cpu.inject(Fault.HTTP_ERROR, status=500, message="unexpected server failure")
    with pytest.raises(AllBackendsFailedError) as info:
        model.invoke("hi")
    assert not isinstance(info.value, RequestRejectedError)
    # The GPU is blamed once the CPU answered differently; the CPU's own answer found no
    # other server to compare with, so it is left uncounted (never blamed on a guess).
    assert _circuits(model) == {"gpu": "open", "cpu": "closed"}


def test_embeddings_follow_the_same_rule(ollama_standin_factory: StandInFactory) -> None:
    models = [StandInModel("nomic-embed-text", digest="c3" * 32)]
    gpu = ollama_standin_factory(name="gpu", models=models, gpu_fraction=1.0)
    cpu = ollama_standin_factory(name="cpu", models=models, gpu_fraction=0.0)
    emb = HybridOllamaEmbeddings(
        model="nomic-embed-text",
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url, kind="gpu"),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
        ],
        clock=FakeClock(),
        background_probes=False,
    )
    try:
        for srv in (gpu, cpu):
            srv.inject(Fault.HTTP_ERROR, status=500, message="input too large", paths="/api/embed")
        with pytest.raises(RequestRejectedError):
            emb.embed_documents(["a", "b"])
        for srv in (gpu, cpu):
            srv.clear_faults()
        assert len(emb.embed_documents(["a", "b"])) == 2
        assert [b.backend for b in emb.last_batches] == ["gpu"]
    finally:
        emb.close()


def test_options_are_checked_before_anything_is_sent() -> None:
    """The local check (``_request_check``): what Ollama's option parser would refuse, an
    unknown name (Ollama would silently ignore it) and ``num_ctx <= 0``."""
    check_options(None)
    check_options({"num_ctx": 4096, "temperature": 0, "stop": ["\n"], "seed": None})
    check_options({"num_ctx": 8192.0, "use_mmap": False, "top_p": 0.5})
    for bad, words in [
        ({"num_ctx": "big"}, ("'num_ctx'", "integer", "'big'")),
        ({"num_ctx": 0}, ("'num_ctx'", "> 0")),
        ({"num_ctx": -5}, ("'num_ctx'", "> 0")),
        ({"num_ctx": True}, ("'num_ctx'", "bool")),
        ({"temperature": float("nan")}, ("'temperature'", "finite")),
        ({"temperature": "hot"}, ("'temperature'", "number")),
        ({"stop": "\n"}, ("'stop'", "list of strings")),
        ({"use_mmap": 1}, ("'use_mmap'", "boolean")),
        ({"num_cxt": 4096}, ("'num_cxt'", "not an Ollama option", "did you mean 'num_ctx'")),
        ("num_ctx=4096", ("options must be a dict",)),
    ]:
        with pytest.raises(InvalidRequestError) as info:
            check_options(bad)
        text = str(info.value)
        assert isinstance(info.value, ValueError)
        assert all(w in text for w in words), text
        assert text.endswith("nothing was sent")
    assert request_num_ctx({"num_ctx": 8192}, 2048) == 8192
    assert request_num_ctx({"temperature": 0}, 2048) == 2048


def test_an_invalid_option_is_refused_locally(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    gpu, cpu = pair
    model = make_model()
    with pytest.raises(InvalidRequestError) as info:
        model.invoke("hi", options={"num_ctx": "big"})
    assert not isinstance(info.value, RequestRejectedError)
    assert "nothing was sent" in str(info.value)
    assert gpu.requests_to("/api/chat") == [] and cpu.requests_to("/api/chat") == []


# ---------------------------------------------------------------- item 6: the why
def test_an_answer_past_a_skipped_first_choice_is_a_fallback_logged_once(
    pair: Pair,
    make_model: Callable[..., HybridChatOllama],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The GPU down from the start: the CPU's answer said ``fallback: False`` and nothing
    was logged at WARNING on the base commit."""
    gpu, _cpu = pair
    gpu.inject(Fault.REFUSE)
    model = make_model()
    model.refresh()  # the probes a fresh instance's first call waits for
    caplog.set_level(logging.WARNING, logger="langchain_contextharbor")
    metas = [model.invoke(f"hi {k}").response_metadata["contextharbor"] for k in range(3)]
    for meta in metas:
        assert meta["backend"] == "cpu" and meta["fallback"] is True and meta["attempts"] == []
        assert [s["backend"] for s in meta["skipped"]] == ["gpu"]
        assert meta["skipped"][0]["reason"].startswith("down")
        assert meta["route"] == ["cpu"]
        assert "no gpu backend can take the call" in meta["route_summary"]
        assert "cpu tier" in meta["reason"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "backend gpu" in warnings[0].getMessage()
    assert "skipped: down" in warnings[0].getMessage()
    # The outage ends; the next one is logged again.
    gpu.clear_faults()
    clock.advance(60)
    model.refresh()
    meta = model.invoke("back").response_metadata["contextharbor"]
    assert (meta["backend"], meta["fallback"]) == ("gpu", False)
    gpu.inject(Fault.REFUSE)
    clock.advance(60)
    model.refresh()
    assert model.invoke("again").response_metadata["contextharbor"]["fallback"] is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2


def test_a_skipped_backend_of_the_other_tier_is_no_fallback(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    _gpu, cpu = pair
    cpu.inject(Fault.REFUSE)
    model = make_model()
    model.refresh()
    meta = model.invoke("hi").response_metadata["contextharbor"]
    assert meta["backend"] == "gpu" and meta["fallback"] is False
    assert [s["backend"] for s in meta["skipped"]] == ["cpu"]


def test_model_sizes_put_cpu_first_so_a_down_gpu_is_no_fallback(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    """A model over the size threshold goes CPU first anyway: the GPU being down does not
    make the CPU's answer a fallback."""
    gpu, _cpu = pair
    gpu.inject(Fault.REFUSE)
    model = make_model(model_sizes={MODEL: 40.0})
    model.refresh()
    meta = model.invoke("hi").response_metadata["contextharbor"]
    assert meta["backend"] == "cpu" and meta["fallback"] is False


def test_a_gateways_answer_is_the_backends_even_when_repeated(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    """Ollama itself never answers 502: two proxies that cannot reach their servers say
    something about those servers, not about the request."""
    model = make_model()
    for srv in pair:
        srv.inject(Fault.HTTP_ERROR, status=502, message="bad gateway")
    with pytest.raises(AllBackendsFailedError) as info:
        model.invoke("hi")
    assert not isinstance(info.value, RequestRejectedError)
    assert _circuits(model) == {"gpu": "open", "cpu": "open"}


def test_a_server_repeating_itself_in_a_retry_round_proves_nothing(
    pair: Pair, make_model: Callable[..., HybridChatOllama]
) -> None:
    """``max_retries=1``, the CPU down: the GPU's same 500 in both rounds is neither the
    request's fault (no other server said so) nor proven the GPU's."""
    gpu, cpu = pair
    cpu.inject(Fault.REFUSE)
    model = make_model(max_retries=1)
    gpu.inject(Fault.HTTP_ERROR, status=500, message="invalid format", count=2)
    with pytest.raises(AllBackendsFailedError) as info:
        model.invoke("hi")
    assert not isinstance(info.value, RequestRejectedError)
    assert [a.backend for a in info.value.attempts] == ["gpu", "cpu", "gpu"]
    assert _circuits(model)["gpu"] == "closed"
    assert model.invoke("hi again").response_metadata["backend"] == "gpu"

"""Broken replies over real TCP (issue 17): each ends in a failover or a typed error, within
its deadline budget, with bounded memory.

The GPU backend is a :class:`~langchain_contextharbor.testing.fuzz.FuzzServer` in front of a
healthy stand-in (probes and ``/api/show`` answer; ``/api/chat`` or ``/api/embed`` is broken
as the case says); the CPU backend is a healthy stand-in. Deadlines are set small where a
case provokes one, and every case is timed against a budget of real seconds.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from langchain_contextharbor import (
    AllBackendsFailedError,
    BackendConfig,
    DeadlineExceededError,
    HybridChatOllama,
    HybridOllamaEmbeddings,
    Timeouts,
)
from langchain_contextharbor._replies import checked_embeddings, embeddings_fault
from langchain_contextharbor._transport import MalformedReply
from langchain_contextharbor.classify import FailoverCategory, classify_exception
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.fuzz import CHAT_CASES, EMBED_CASES, FuzzServer
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"
RAW = (ValidationError, AttributeError, TypeError, UnicodeDecodeError, json.JSONDecodeError)
"""Third-party exceptions that must never reach the caller as themselves."""

QUICK = Timeouts(connect=5.0, first_token=10.0, idle=1.0, probe=5.0)
"""Short idle deadline: the trickle and empty-chunk cases end on it."""

BUDGET = 8.0
"""Real seconds any case may take on a loaded CI machine (idle deadline 1 s + margins)."""


@pytest.fixture
def upstream(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    models: list[StandInModel | str] = [MODEL, StandInModel(EMBED)]
    gpu = ollama_standin_factory(name="gpu", models=models, gpu_fraction=1.0)
    cpu = ollama_standin_factory(name="cpu", models=models, gpu_fraction=0.0)
    return gpu, cpu


Fuzzed = Callable[..., tuple[Any, FuzzServer]]


@pytest.fixture
def fuzzed(upstream: tuple[OllamaStandIn, OllamaStandIn]) -> Iterator[Fuzzed]:
    """``fuzzed(case, kind="chat"|"embed", timeouts=..., both=False, **model_kw)``: a model
    whose GPU answers ``case`` (and the CPU too with ``both``); closed after the test."""
    made: list[Any] = []
    servers: list[FuzzServer] = []

    def make(
        case: str,
        kind: str = "chat",
        timeouts: Timeouts = QUICK,
        both: bool = False,
        gap: float = 0.05,
        **kw: Any,
    ) -> tuple[Any, FuzzServer]:
        gpu, cpu = upstream
        path = "/api/chat" if kind == "chat" else "/api/embed"
        fz = FuzzServer(gpu.url, case, path=path, gap=gap).start()
        servers.append(fz)
        cpu_url = cpu.url
        if both:
            fz2 = FuzzServer(cpu.url, case, path=path, gap=gap).start()
            servers.append(fz2)
            cpu_url = fz2.url
        backends = [
            BackendConfig(name="gpu", base_url=fz.url, kind="gpu", timeouts=timeouts),
            BackendConfig(name="cpu", base_url=cpu_url, kind="cpu", timeouts=timeouts),
        ]
        cls = HybridChatOllama if kind == "chat" else HybridOllamaEmbeddings
        m = cls(
            model=MODEL if kind == "chat" else EMBED,
            backends=backends,
            background_probes=False,
            **kw,
        )
        made.append(m)
        return m, fz

    yield make
    for m in made:
        m.close()
    for s in servers:
        s.stop()


def _timed(fn: Callable[[], Any], budget: float = BUDGET) -> Any:
    t = time.monotonic()
    try:
        return fn()
    finally:
        took = time.monotonic() - t
        assert took < budget, f"took {took:.1f}s, over its budget of {budget:g}s"


def _failed_over(result_meta: dict[str, Any], category: str | tuple[str, ...]) -> dict[str, Any]:
    assert result_meta["backend"] == "cpu"
    attempts = result_meta["contextharbor"]["attempts"]
    assert [a["backend"] for a in attempts] == ["gpu"]
    cats = (category,) if isinstance(category, str) else category
    assert attempts[0]["category"] in cats, attempts[0]
    first: dict[str, Any] = attempts[0]
    return first


# ---------------------------------------------------------------------- chat
CHAT_EXPECT: dict[str, str | tuple[str, ...]] = {
    "trickle": "timeout",
    "endless_line": "malformed",
    "empty_chunks": "timeout",
    "content_number": "malformed",
    "message_null": "malformed",
    "message_list": "malformed",
    "json_list": "malformed",
    "json_string": "malformed",
    "json_null": "malformed",
    "non_utf8": "malformed",
    "non_utf8_content": "malformed",
    "error_200": "stream_error",
    "empty_200": "malformed",
    "eval_count_string": "malformed",
    "tool_calls_wrong": "malformed",
}


def test_every_chat_case_is_expected() -> None:
    assert set(CHAT_EXPECT) | {"huge_timings"} == set(CHAT_CASES)


@pytest.mark.parametrize("case", sorted(CHAT_EXPECT))
def test_a_broken_chat_reply_fails_over_to_the_healthy_server(fuzzed: Fuzzed, case: str) -> None:
    model, fz = fuzzed(case)
    out = _timed(lambda: model.invoke("hi"))
    attempt = _failed_over(out.response_metadata, CHAT_EXPECT[case])
    assert fz.hits == 1
    assert model.stats()["gpu"]["consecutive_failures"] == 1  # counted against the backend
    assert attempt["message"]  # named in the record


@pytest.mark.parametrize(
    "case", ["trickle", "endless_line", "empty_chunks", "json_list", "empty_200"]
)
async def test_a_broken_chat_stream_fails_over_async(fuzzed: Fuzzed, case: str) -> None:
    model, _ = fuzzed(case)
    t = time.monotonic()
    chunks = [c async for c in model.astream("hi")]
    assert time.monotonic() - t < BUDGET
    _failed_over(chunks[0].response_metadata, CHAT_EXPECT[case])


@pytest.mark.parametrize("case", ["trickle", "empty_chunks"])
def test_a_sync_stream_of_no_progress_fails_over(fuzzed: Fuzzed, case: str) -> None:
    model, _ = fuzzed(case, gap=0.001 if case == "empty_chunks" else 0.05)
    chunks = _timed(lambda: list(model.stream("hi")))
    _failed_over(chunks[0].response_metadata, "timeout")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_empty_chunks_as_fast_as_loopback_goes_hold_bounded_memory(fuzzed: Fuzzed) -> None:
    """Idle deadline 30 s, empty chunks with no pause: a stream holds chunks until its first
    substantive one, so the reply ends after MAX_EMPTY_CHUNKS of them, not 30 s of them."""
    t = Timeouts(connect=5.0, first_token=10.0, idle=30.0, probe=5.0)
    model, _ = fuzzed("empty_chunks", timeouts=t, gap=0.0)
    base = _rss()
    chunks = _timed(lambda: list(model.stream("hi")), budget=25.0)
    attempt = _failed_over(chunks[0].response_metadata, "timeout")
    assert "empty chunks in a row" in attempt["message"]
    assert (_rss() - base) / 2**20 < 128


def test_the_default_total_deadline_is_generous_and_documented() -> None:
    """No ``Timeouts(total=)``: a request still has a deadline, the first-token one plus
    DEFAULT_STREAM_S (Ollama's default 4,096-token context at one token per second)."""
    from langchain_contextharbor._transport import DEFAULT_STREAM_S, _deadline

    t = Timeouts()
    start = time.monotonic()
    deadline, source, caps = _deadline(t)
    assert DEFAULT_STREAM_S == 4096.0 and not caps and "default" in source
    assert start + t.first_token + DEFAULT_STREAM_S <= deadline < start + 5000.0
    deadline, source, caps = _deadline(Timeouts(total=3.0))
    assert caps and deadline - start == pytest.approx(3.0, abs=0.5)


def test_a_trickle_without_newline_ends_at_the_total_deadline(fuzzed: Fuzzed) -> None:
    """A byte every 0.4 s, never a newline: the idle deadline (30 s) never runs out between
    bytes, the total one (3 s) ends the call, at the transport, between bytes."""
    t = Timeouts(connect=5.0, first_token=10.0, idle=30.0, probe=5.0, total=3.0)
    model, _ = fuzzed("trickle", timeouts=t, both=True, gap=0.4)
    with pytest.raises(DeadlineExceededError):
        _timed(lambda: model.invoke("hi"), budget=3.0 + 2.0)


async def test_a_trickle_ends_at_the_total_deadline_async(fuzzed: Fuzzed) -> None:
    t = Timeouts(connect=5.0, first_token=10.0, idle=30.0, probe=5.0, total=3.0)
    model, _ = fuzzed("trickle", timeouts=t, both=True, gap=0.4)
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        async for _ in model.astream("hi"):
            pass
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize("case", ["json_list", "content_number", "non_utf8", "empty_200"])
def test_every_server_broken_is_a_typed_error_naming_both(fuzzed: Fuzzed, case: str) -> None:
    model, _ = fuzzed(case, both=True)
    with pytest.raises(AllBackendsFailedError) as info:
        _timed(lambda: model.invoke("hi"))
    err = info.value
    assert not isinstance(err, RAW)
    assert [a.backend for a in err.attempts] == ["gpu", "cpu"]
    assert {a.category for a in err.attempts} == {"malformed"}


def test_implausible_timings_teach_no_speed(fuzzed: Fuzzed) -> None:
    """1e18 tokens/s and a 1e8 s load: the answer is served, its timings are not learned."""
    model, _ = fuzzed("huge_timings")
    out = _timed(lambda: model.invoke("hi"))
    assert out.response_metadata["backend"] == "gpu" and out.content == "hi"
    assert MODEL not in model.stats()["gpu"]["speeds"]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_an_endless_line_is_cut_at_the_line_bound_with_bounded_memory(fuzzed: Fuzzed) -> None:
    """64 KiB pieces of one line, as fast as loopback goes: the reply is cut at the line
    bound (16 MiB), and the process grows by a bounded amount while it streams."""
    model, _ = fuzzed("endless_line", both=True)
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        with pytest.raises(AllBackendsFailedError) as info:
            _timed(lambda: model.invoke("hi"), budget=20.0)
    finally:
        done.set()
        th.join()
    assert "a line over" in info.value.attempts[0].message
    grown = (peak[0] - base) / 2**20
    assert grown < 256, f"RSS grew {grown:.0f} MiB while an endless line streamed"


# ---------------------------------------------------------------------- embeddings
EMBED_NEEDS_HOOK = {"nan", "inf", "short", "mixed", "empty_vector", "count_mismatch"}
"""Cases only the vector check (``_replies.checked_embeddings``) catches: it needs its
one-line call in embeddings.py's batch loops, which another change owns."""

EMBED_EXPECT = {
    "strings": "malformed",
    "null_vectors": "malformed",
    "missing_vectors": "malformed",
    "body_list": "malformed",
    "error_200": ("malformed", "stream_error", "server_error"),
    "non_utf8": "malformed",
    "empty_200": "malformed",
    "trickle": "timeout",
    "endless_line": "malformed",
    **{c: "malformed" for c in EMBED_NEEDS_HOOK},
}


def test_every_embed_case_is_expected() -> None:
    assert set(EMBED_EXPECT) == set(EMBED_CASES)


def _embed_params() -> list[Any]:
    return sorted(EMBED_EXPECT)


def _embed_failed_over(emb: HybridOllamaEmbeddings, n: int, vectors: list[list[float]]) -> None:
    assert len(vectors) == n and len({len(v) for v in vectors}) == 1
    assert [b.backend for b in emb.last_batches] == ["cpu"]


@pytest.mark.parametrize("case", _embed_params())
def test_a_broken_embed_reply_fails_over(fuzzed: Fuzzed, case: str) -> None:
    kw: dict[str, Any] = {"dimensions": 32} if case == "short" else {}
    emb, _ = fuzzed(case, kind="embed", **kw)
    texts = ["a", "b", "c"]
    vectors = _timed(lambda: emb.embed_documents(texts))
    _embed_failed_over(emb, 3, vectors)
    assert emb.shared_router.stats()["gpu"]["consecutive_failures"] == 1


@pytest.mark.parametrize("case", ["body_list", "non_utf8", "trickle", "empty_200"])
async def test_a_broken_embed_reply_fails_over_async(fuzzed: Fuzzed, case: str) -> None:
    emb, _ = fuzzed(case, kind="embed")
    t = time.monotonic()
    vectors = await emb.aembed_documents(["a", "b"])
    assert time.monotonic() - t < BUDGET
    _embed_failed_over(emb, 2, vectors)


def test_an_embed_trickle_meets_the_total_deadline(fuzzed: Fuzzed) -> None:
    """The embeddings honour ``Timeouts.total`` at the transport: a trickle (a byte every
    0.4 s, idle deadline 30 s) is ended at 3 s and the batch goes to the CPU."""
    t = Timeouts(connect=5.0, first_token=10.0, idle=30.0, probe=5.0, total=3.0)
    emb, _ = fuzzed("trickle", kind="embed", timeouts=t, gap=0.4)
    vectors = _timed(lambda: emb.embed_documents(["a"]), budget=3.0 + 3.0)
    _embed_failed_over(emb, 1, vectors)


# ---------------------------------------------------------------------- pure checks
@pytest.mark.parametrize(
    ("vectors", "count", "dim", "says"),
    [
        ([[0.1, 0.2]], 1, None, None),
        ([[0.1, 0.2]], 1, 2, None),
        (None, 1, None, "NoneType"),
        ([[0.1]], 2, None, "1 vectors for 2 texts"),
        ([[0.1, float("nan")]], 1, None, "NaN"),
        ([[0.1, float("-inf")]], 1, None, "NaN or infinity"),
        ([[0.1], [0.1, 0.2]], 2, None, "vector 1 has 2 dimensions"),
        ([[0.1, 0.2]], 1, 3, "the model's 3"),
        ([[]], 1, None, "empty"),
        ([["x"]], 1, None, "not a number"),
        (["abc"], 1, None, "not a list"),
    ],
)
def test_embeddings_fault(vectors: Any, count: int, dim: int | None, says: str | None) -> None:
    got = embeddings_fault(vectors, count, dim)
    if says is None:
        assert got is None
    else:
        assert got is not None and says in got


def test_a_bad_batch_is_a_malformed_reply_naming_the_backend() -> None:
    with pytest.raises(MalformedReply, match="gpu answered /api/embed with vector 0 is empty") as i:
        checked_embeddings([[]], 1, None, "gpu")
    c = classify_exception(i.value)
    assert c.category is FailoverCategory.MALFORMED and c.failover and c.counts_against_backend


def test_the_callers_own_bad_input_stays_fatal() -> None:
    """A TypeError or AttributeError not raised reading a reply is the caller's: no failover."""
    for exc in (TypeError("bad argument"), AttributeError("no such thing")):
        try:
            raise exc
        except Exception as e:
            assert classify_exception(e).category is FailoverCategory.FATAL
    import ollama

    with pytest.raises(Exception) as info:  # the caller's message, checked before sending
        ollama.Client(host="http://127.0.0.1:9").chat(
            model=MODEL, messages=[{"role": "user", "content": object()}]
        )
    assert classify_exception(info.value).category is FailoverCategory.FATAL
    assert not isinstance(info.value, httpx.TransportError)


def _guard(limit: int = 1 << 20) -> Any:
    from langchain_contextharbor._transport import _Guard

    req = httpx.Request("POST", "http://127.0.0.1/api/chat")
    return _Guard(req, 30.0, (time.monotonic() + 60.0, "test"), limit, "gpu", True)


def test_the_guard_counts_lines_not_reads() -> None:
    """Empty chunks count whether they come one per read or several; a line split across
    reads is neither progress nor empty; a multi-byte character split across reads is
    UTF-8; a line over the bound is malformed wherever its newline falls."""
    from langchain_contextharbor._transport import MAX_EMPTY_CHUNKS, StreamDeadline

    empty = b'{"model":"m","message":{"role":"assistant","content":""},"done":false}\n'
    g = _guard()
    with pytest.raises(StreamDeadline, match="empty chunks in a row"):
        for _ in range(MAX_EMPTY_CHUNKS // 4 + 1):
            g.step(empty * 4)
    g = _guard()
    g.step(empty[:10])
    g.step(empty[10:])  # the tail of a split empty line: still empty
    assert g.empties == 1
    g.step(b'{"message":{"content":"x"},"done":false}\n')
    assert g.empties == 0
    g.step("é".encode()[:1])
    g.step("é".encode()[1:] + b"\n")  # split between reads: fine
    with pytest.raises(MalformedReply, match="not UTF-8"):
        g.step(b"\xff\n")
    g = _guard(limit=100)
    g.step(b"a" * 60)
    with pytest.raises(MalformedReply, match="a line over 100 bytes"):
        g.step(b"a" * 60 + b"\n")

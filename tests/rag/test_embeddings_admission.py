"""Embeddings are admitted exactly as chat calls are (one admission protocol): a due trial
runs in the background, a saturated backend spills over, a cancelled batch is abandoned.

Over real HTTP against the stand-ins (and a real redis-server for fleet mode)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from ragkit import CHAT, DIGEST_A, EMBED, ROOMY

from langchain_contextharbor import (
    AllBackendsFailedError,
    BackendConfig,
    BreakerPolicy,
    HybridChatOllama,
    HybridOllamaEmbeddings,
)
from langchain_contextharbor.fleet import LocalState
from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory
from langchain_contextharbor.testing.redis_server import RedisServer

MakeEmb = Callable[..., HybridOllamaEmbeddings]


def embeds(srv: OllamaStandIn) -> list[list[str]]:
    return [r.body["input"] for r in srv.requests_to("/api/embed")]


def test_a_due_trial_runs_in_the_background_and_the_batch_goes_on(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb, clock: FakeClock
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu, breaker=BreakerPolicy(cooldown=10))
    router = emb.shared_router
    gpu.inject(Fault.HTTP_ERROR, status=502, message="bad gateway", paths=["/api/embed"], count=1)
    emb.embed_query("first")  # the GPU fails once: its circuit opens, the CPU answers
    assert router.stats()["gpu"]["circuit"] == "open"
    clock.advance(11)  # cooldown over: the GPU's trial is due
    emb.embed_query("second")
    # The trial is the router's own one-token request, not this batch: the batch went on
    # to the CPU (the chat model's rule), and the trial's answer closed the circuit.
    assert router.trial_futures["gpu"].result(timeout=30) is True
    assert len(gpu.requests_to("/api/chat")) == 1
    assert embeds(gpu) == [["first"]] and embeds(cpu) == [["first"], ["second"]]
    assert router.stats()["gpu"]["circuit"] == "closed"


def test_the_trial_skip_is_recorded_like_the_chat_models(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb, clock: FakeClock
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu, breaker=BreakerPolicy(cooldown=10))
    gpu.inject(Fault.HTTP_ERROR, status=502, message="bad gateway", paths=["/api/embed"], count=1)
    emb.embed_query("first")
    clock.advance(11)
    emb.embed_query("second")
    (batch,) = emb.last_batches
    assert batch.backend == "cpu" and batch.fallback  # the GPU was passed over for it
    emb.shared_router.trial_futures["gpu"].result(timeout=30)
    emb.embed_query("third")
    assert emb.last_batches[0].backend == "gpu"  # back on the GPU after its trial


async def test_a_cancelled_batch_is_counted_as_abandoned(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu)
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK, paths=["/api/embed"])
    try:
        task = asyncio.ensure_future(emb.aembed_query("hi"))
        while not gpu.requests_to("/api/embed"):  # the batch is on the GPU, hanging there
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        gpu.clear_faults()
    s = emb.shared_router.stats()["gpu"]
    assert s["abandoned"] == 1 and s["in_flight"] == 0
    assert s["requests"] == s["successes"] + sum(s["failures"].values()) + s["abandoned"]
    assert embeds(cpu) == []  # a cancelled batch is not sent elsewhere


# ------------------------------------------------------------------ fleet mode
class TrialsElsewhere(LocalState):
    """A fleet in which another worker always holds the trial call."""

    def acquire(
        self,
        backend: str,
        now: float,
        *,
        trial: bool,
        spill_to: Sequence[str] = (),
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> bool | None:
        return False if trial else None


def test_a_fleet_refusal_is_labelled_as_the_chat_model_labels_it(
    pair: tuple[OllamaStandIn, OllamaStandIn], clock: FakeClock
) -> None:
    gpu, _ = pair
    llm = HybridChatOllama(
        model=CHAT,
        backends=[BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=ROOMY)],
        clock=clock,
        background_probes=False,
        breaker=BreakerPolicy(cooldown=10),
        shared_state=TrialsElsewhere(),
    )
    emb = HybridOllamaEmbeddings.from_chat_model(llm, model=EMBED)
    try:
        gpu.inject(Fault.HTTP_ERROR, status=502, message="bad gateway", paths=["/api/embed"])
        with pytest.raises(AllBackendsFailedError):
            emb.embed_query("x")  # the only server fails: its circuit opens
        gpu.clear_faults()
        clock.advance(11)  # its trial is due, and another worker of the fleet holds it
        with pytest.raises(AllBackendsFailedError) as info:
            emb.embed_query("y")
        (skip,) = info.value.skipped
        assert skip.backend == "gpu" and skip.reason.startswith("not admitted at send time")
        assert embeds(gpu) == [["x"]]
    finally:
        emb.close()
        llm.close()


@pytest.fixture
def twins(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    """Two alike GPU servers: spill-over pays when one is saturated."""
    models = [CHAT, StandInModel(EMBED, digest=DIGEST_A)]
    return (
        ollama_standin_factory(name="a", models=models),
        ollama_standin_factory(name="b", models=models),
    )


@pytest.fixture
def fleet(
    twins: tuple[OllamaStandIn, OllamaStandIn], redis_server: RedisServer
) -> Iterator[Callable[..., HybridChatOllama]]:
    """Workers sharing one Redis (one slot per server fleet-wide) on one fake clock."""
    from langchain_contextharbor._fleet_redis import RedisSharedState

    made: list[HybridChatOllama] = []
    clock = FakeClock(1_000_000.0)

    def make(**kw: Any) -> HybridChatOllama:
        a, b = twins
        shared = RedisSharedState(
            redis_server.url,
            ["a", "b"],
            max_parallel={"a": 1, "b": 1},
            clock=clock,
            view_max_age=kw.pop("view_max_age", 0.0),
            async_release=False,
        )
        m = HybridChatOllama(
            model=CHAT,
            backends=[
                BackendConfig(name="a", base_url=a.url, kind="gpu", timeouts=ROOMY),
                BackendConfig(name="b", base_url=b.url, kind="gpu", timeouts=ROOMY),
            ],
            clock=clock,
            background_probes=False,
            calibrate_speeds=False,
            shared_state=shared,
            **kw,
        )
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.close()
            if m.router._shared is not None:
                m.router._shared.close()


def test_a_batch_planned_on_an_old_view_spills_over_on_fresh_fleet_counts(
    fleet: Callable[..., HybridChatOllama], twins: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    a_srv, b_srv = twins
    other, mine = fleet(), fleet(view_max_age=3600.0)
    emb = HybridOllamaEmbeddings.from_chat_model(mine, model=EMBED)
    emb.embed_query("warm up")  # both free: server a serves; this worker keeps that view
    assert [b.backend for b in emb.last_batches] == ["a"]
    assert other.router.acquire("a")  # another worker's batch now holds a's only slot
    try:
        # Planned on the old view (a first), the batch's admission re-checks fleet-wide:
        # a is saturated and b free, so it spills over to b, as a chat call does.
        emb.embed_query("spill")
        assert [b.backend for b in emb.last_batches] == ["b"]
        assert embeds(a_srv) == [["warm up"]] and embeds(b_srv) == [["spill"]]
    finally:
        other.router.release("a")
    assert mine.router.stats()["a"]["in_flight"] == 0
    assert mine.router.stats()["b"]["in_flight"] == 0

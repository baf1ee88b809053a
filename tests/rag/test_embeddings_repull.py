"""One build per index, always: a re-pull between two batches or while a batch is in flight
is caught before the batch's vectors are believed, not at the next probe (issue 17).

Ollama returns no digest per call, so a batch whose backend's last digest evidence (its
probe) predates the batch is followed by one ``/api/tags`` read; the fake clock never
moves here, so every probe in these tests is "fresh" -- exactly the window that used to be
open for ``probe_ttl`` seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from ragkit import DIGEST_A, DIGEST_B, EMBED, make_pair

from langchain_contextharbor import EmbeddingDigestMismatchError, HybridOllamaEmbeddings
from langchain_contextharbor.testing import OllamaStandIn, ScriptedEngine, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MakeEmb = Callable[..., HybridOllamaEmbeddings]


class RePullsMidBatch(ScriptedEngine):
    """Scripted engine whose N-th embed request re-pulls the model on its server (another
    build) while that request is in flight, and embeds with the new build."""

    def __init__(self, on: int) -> None:
        super().__init__()
        self.on = on
        self.calls = 0
        self.srv: OllamaStandIn | None = None

    def embed(self, spec: Any, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if self.calls == self.on and self.srv is not None:
            spec = self.srv.add_model(StandInModel(EMBED, digest=DIGEST_B))
        return super().embed(spec, texts)


def tags_reads(srv: OllamaStandIn) -> int:
    return len(srv.requests_to("/api/tags"))


def test_re_pull_between_two_batches_is_caught_at_once(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory)
    emb = make_embeddings(gpu, cpu)
    emb.embed_query("first")
    assert emb.last_batches[0].backend == "gpu"
    gpu.add_model(StandInModel(EMBED, digest=DIGEST_B))  # the probe is still fresh
    got = emb.embed_query("second")
    # The GPU's vectors (build B) were refused; the CPU (build A) embedded instead.
    (batch,) = emb.last_batches
    assert (batch.backend, batch.digest, batch.fallback) == ("cpu", DIGEST_A, True)
    assert got == emb.embed_query("second") and not emb.mixed_digests
    assert emb.digests_used == {"gpu": DIGEST_A, "cpu": DIGEST_A}


def test_re_pull_on_every_server_between_batches_raises(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory)
    emb = make_embeddings(gpu, cpu)
    emb.embed_documents(["a", "b"])
    for srv in (gpu, cpu):
        srv.add_model(StandInModel(EMBED, digest=DIGEST_B))
    with pytest.raises(EmbeddingDigestMismatchError) as info:
        emb.embed_documents(["c"])
    assert info.value.found == {"gpu": DIGEST_B, "cpu": DIGEST_B}
    assert not emb.mixed_digests


def test_re_pull_while_a_batch_is_in_flight_is_refused(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    engine = RePullsMidBatch(on=2)
    gpu = ollama_standin_factory(
        name="gpu", models=[StandInModel(EMBED, digest=DIGEST_A)], engine=engine
    )
    engine.srv = gpu
    cpu = ollama_standin_factory(
        name="cpu", models=[StandInModel(EMBED, digest=DIGEST_A)], gpu_fraction=0.0
    )
    emb = make_embeddings(gpu, cpu, batch_size=2)
    emb.embed_documents(["a", "b", "c", "d"])  # the second batch re-pulled mid-flight
    assert [(b.backend, b.digest) for b in emb.last_batches] == [
        ("gpu", DIGEST_A),
        ("cpu", DIGEST_A),
    ]
    assert not emb.mixed_digests


def test_re_pull_in_flight_allowed_is_marked(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    engine = RePullsMidBatch(on=1)
    gpu = ollama_standin_factory(
        name="gpu", models=[StandInModel(EMBED, digest=DIGEST_A)], engine=engine
    )
    engine.srv = gpu
    cpu = ollama_standin_factory(
        name="cpu", models=[StandInModel(EMBED, digest=DIGEST_A)], gpu_fraction=0.0
    )
    emb = make_embeddings(gpu, cpu, allow_digest_mismatch=True, batch_size=1)

    async def go() -> None:
        await emb.aembed_documents(["a", "b"])

    asyncio.run(go())
    # The first batch was vetted for A but embedded by B: it is recorded as B (what really
    # embedded it), and B is the build adopted, not the stale A.
    assert emb.last_batches[0].digest == DIGEST_B
    assert emb.digests_used["gpu"] == DIGEST_B and emb.digest == DIGEST_B


def test_async_re_pull_between_batches_raises_without_a_fallback(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory)
    emb = make_embeddings(gpu, cpu)

    async def go() -> None:
        await emb.aembed_query("first")
        for srv in (gpu, cpu):
            srv.add_model(StandInModel(EMBED, digest=DIGEST_B))
        with pytest.raises(EmbeddingDigestMismatchError):
            await emb.aembed_query("second")

    asyncio.run(go())


def test_the_re_read_costs_one_tags_request_per_batch_at_most(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory)
    emb = make_embeddings(gpu, cpu, batch_size=2)
    emb.embed_query("warm")
    before = tags_reads(gpu)
    emb.embed_documents(["a", "b", "c", "d", "e", "f"])
    assert tags_reads(gpu) - before == 3  # three batches, one read each
    assert tags_reads(cpu) <= 1  # only its probe


def test_embeddings_never_send_calibration_chats(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory)
    emb = make_embeddings(gpu, cpu)
    router = emb.shared_router
    assert router.calibrate_speeds  # on by default: the chat model's plans may calibrate
    router.refresh(EMBED)
    router.acquire("gpu")  # a saturated GPU: the plan names the CPU as unmeasured
    try:
        plan = emb._plan(2048)
        assert plan.unmeasured == ("cpu",)
        emb.embed_documents(["a", "b"])
    finally:
        router.release("gpu")
    for fut in list(router.calibration_futures.values()):
        fut.result(timeout=30)  # (none: a calibration would be waited for, not slept on)
    assert router.calibration_futures == {}
    assert router.stats()["cpu"]["calibrations"] == {"sent": 0, "failed": 0}
    assert gpu.requests_to("/api/chat") == [] and cpu.requests_to("/api/chat") == []

"""HybridOllamaEmbeddings over real HTTP: routing, batching, failover, digest safety."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import httpx
import ollama
import pytest
from langchain_ollama import OllamaEmbeddings
from ragkit import CHAT, DIGEST_A, DIGEST_B, EMBED, backends_for, make_pair

from langchain_contextharbor import (
    AllBackendsUnreachableError,
    EmbeddingDigestMismatchError,
    EmbeddingInputError,
    HybridChatOllama,
    HybridOllamaEmbeddings,
    ModelNotAvailableError,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn, ScriptedEngine, StandInModel
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MakeEmb = Callable[..., HybridOllamaEmbeddings]
TEXTS = [f"document number {i} about topic {i % 3}" for i in range(10)]


def reference(srv: OllamaStandIn, texts: Sequence[str]) -> list[list[float]]:
    """What plain OllamaEmbeddings gets from one server."""
    return OllamaEmbeddings(model=EMBED, base_url=srv.url).embed_documents(list(texts))


def embed_inputs(srv: OllamaStandIn) -> list[list[str]]:
    return [r.body["input"] for r in srv.requests_to("/api/embed")]


class DiesOnEmbed(ScriptedEngine):
    """Scripted engine whose N-th embed request kills the connection (a crashed runner)."""

    def __init__(self, die_on: int) -> None:
        super().__init__()
        self.die_on = die_on
        self.calls = 0

    def embed(self, spec: Any, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if self.calls == self.die_on:
            raise OSError("GPU runner died")
        return super().embed(spec, texts)


# ------------------------------------------------------------------ routing and batching
def test_gpu_first_in_batches_and_in_order(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu, batch_size=3)
    assert emb.embed_documents(TEXTS) == reference(gpu, TEXTS)
    assert [len(b) for b in embed_inputs(gpu)[:4]] == [3, 3, 3, 1]
    assert embed_inputs(cpu) == []
    assert emb.digest == DIGEST_A and emb.digests_used == {"gpu": DIGEST_A}
    assert [(b.start, b.end, b.backend) for b in emb.last_batches] == [
        (0, 3, "gpu"),
        (3, 6, "gpu"),
        (6, 9, "gpu"),
        (9, 10, "gpu"),
    ]
    assert emb.embed_query(TEXTS[4]) == reference(gpu, [TEXTS[4]])[0]


def test_configured_from_env_like_the_chat_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_GPU_URL", "http://127.0.0.1:21434")
    monkeypatch.setenv("OLLAMA_CPU_URL", "")
    emb = HybridOllamaEmbeddings(model=EMBED)
    assert [(c.name, c.base_url) for c in emb.backend_configs] == [
        ("gpu", "http://127.0.0.1:21434")
    ]


def test_one_server_by_base_url_like_ollama_embeddings(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    emb = HybridOllamaEmbeddings(model=EMBED, base_url=gpu.url, background_probes=False)
    assert [c.name for c in emb.backend_configs] == ["default"]
    assert emb.embed_query("hello") == reference(gpu, ["hello"])[0]
    from langchain_contextharbor import ConfigurationError

    with pytest.raises(ConfigurationError, match="base_url cannot be combined"):
        HybridOllamaEmbeddings(model=EMBED, base_url=gpu.url, backends=backends_for(gpu, cpu))


# ------------------------------------------------------------------ failover
def test_failure_part_way_resumes_on_the_fallback_without_redoing_finished_batches(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    engine = DiesOnEmbed(die_on=3)
    gpu = ollama_standin_factory(
        name="gpu", models=[StandInModel(EMBED, digest=DIGEST_A)], engine=engine
    )
    cpu = ollama_standin_factory(
        name="cpu", models=[StandInModel(EMBED, digest=DIGEST_A)], gpu_fraction=0.0
    )
    emb = make_embeddings(gpu, cpu, batch_size=3)
    assert emb.embed_documents(TEXTS) == reference(cpu, TEXTS)
    assert embed_inputs(gpu) == [TEXTS[0:3], TEXTS[3:6], TEXTS[6:9]]  # the third one died
    assert embed_inputs(cpu)[:2] == [TEXTS[6:9], TEXTS[9:10]]  # only what was left
    assert [(b.backend, b.fallback) for b in emb.last_batches] == [
        ("gpu", False),
        ("gpu", False),
        ("cpu", True),
        ("cpu", True),
    ]
    assert emb.shared_router.stats()["gpu"]["failures"]["transport"] == 1


async def test_async_failover_when_the_gpu_refuses(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu, batch_size=4)
    first = await emb.aembed_documents(TEXTS[:4])
    gpu.inject(Fault.REFUSE)
    rest = await emb.aembed_documents(TEXTS[4:])
    assert first + rest == reference(cpu, TEXTS)
    assert {b.backend for b in emb.last_batches} == {"cpu"}
    assert await emb.aembed_query(TEXTS[0]) == first[0]


def test_every_server_refusing_is_the_same_typed_error_as_the_chat_models(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu)
    emb.embed_query("warm up")  # both servers probed healthy
    for srv in (gpu, cpu):
        srv.inject(Fault.REFUSE, paths=["/api/embed"])
    with pytest.raises(AllBackendsUnreachableError) as info:
        emb.embed_query("x")
    # What a user's retry filter for a refused connection catches, as with the chat model.
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, httpx.ConnectError)
    err = info.value
    assert {a.category for a in err.attempts} == {"connect"}
    # The CPU is tried or skipped (its digest could not be read: refused too); both named.
    assert {a.backend for a in err.attempts} | {s.backend for s in err.skipped} == {"gpu", "cpu"}


def test_a_hung_gpu_times_out_and_the_cpu_answers(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    from langchain_contextharbor import BackendConfig, Timeouts

    gpu, cpu = pair
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK, paths=["/api/embed"])
    # A short first-token deadline on the hung GPU only: the probes and the CPU that answers
    # keep deadlines a loaded machine cannot run out of.
    short = Timeouts(connect=10.0, first_token=0.3, probe=10.0)
    roomy = backends_for(gpu, cpu)[1]
    hung = BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=short)
    emb = make_embeddings(gpu, cpu, backends=[hung, roomy])
    assert emb.embed_query("hello") == reference(cpu, ["hello"])[0]
    assert emb.shared_router.stats()["gpu"]["failures"]["timeout"] == 1


def test_model_missing_everywhere_names_the_pull(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[CHAT])
    cpu = ollama_standin_factory(name="cpu", models=[CHAT])
    with pytest.raises(ModelNotAvailableError, match=f"ollama pull {EMBED}"):
        make_embeddings(gpu, cpu).embed_query("x")
    assert embed_inputs(gpu) == embed_inputs(cpu) == []


# ------------------------------------------------------------------ digest safety
def test_other_build_on_the_fallback_is_refused_with_the_fix(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory, cpu_digest=DIGEST_B)
    emb = make_embeddings(gpu, cpu)
    index = emb.embed_documents(TEXTS[:3])
    assert len(index) == 3 and emb.digest == DIGEST_A
    gpu.stop()
    with pytest.raises(EmbeddingDigestMismatchError) as info:
        emb.embed_query("which document?")
    err = info.value
    assert err.expected == DIGEST_A and err.found == {"cpu": DIGEST_B}
    text = str(err)
    assert DIGEST_A[:12] in text and DIGEST_B[:12] in text and "first used on 'gpu'" in text
    assert f"ollama pull {EMBED}" in text and "allow_digest_mismatch" in text
    assert embed_inputs(cpu) == []  # nothing was sent to the other build


def test_mismatch_allowed_when_opted_in_and_marked(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory, cpu_digest=DIGEST_B)
    emb = make_embeddings(gpu, cpu, allow_digest_mismatch=True)
    emb.embed_query("first")
    assert not emb.mixed_digests
    gpu.stop()
    assert emb.embed_query("second") == reference(cpu, ["second"])[0]
    assert emb.mixed_digests and emb.digests_used == {"gpu": DIGEST_A, "cpu": DIGEST_B}
    assert emb.last_batches[0].digest == DIGEST_B


def test_expected_digest_catches_a_model_re_pulled_between_runs(
    ollama_standin_factory: StandInFactory, make_embeddings: MakeEmb, clock: FakeClock
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory)
    # Run 1 stored the digest beside its index; `ollama list` style 12-char prefixes work.
    ok = make_embeddings(gpu, cpu, expected_digest="sha256:" + DIGEST_A[:12])
    assert ok.digest == DIGEST_A[:12]
    ok.embed_query("x")
    assert ok.digest == DIGEST_A
    # Between runs both servers got another build of the model.
    for srv in (gpu, cpu):
        srv.add_model(StandInModel(EMBED, digest=DIGEST_B))
    later = make_embeddings(gpu, cpu, expected_digest=DIGEST_A)
    with pytest.raises(EmbeddingDigestMismatchError, match="expected_digest") as info:
        later.embed_documents(["y"])
    assert info.value.found == {"gpu": DIGEST_B, "cpu": DIGEST_B}
    # A running instance notices too, once its probe of the server is renewed.
    clock.advance(ok.probe_ttl + 1)
    with pytest.raises(EmbeddingDigestMismatchError):
        ok.embed_query("x")


def test_bad_expected_digest_is_a_configuration_error() -> None:
    from langchain_contextharbor import ConfigurationError

    with pytest.raises(ConfigurationError, match="expected_digest"):
        HybridOllamaEmbeddings(model=EMBED, expected_digest="abc")


# ------------------------------------------------------------------ bad input
def test_empty_list_sends_nothing(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    assert make_embeddings(gpu, cpu).embed_documents([]) == []
    assert gpu.requests == [] and cpu.requests == []


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (["ok", 3], r"texts\[1\] is int, not str"),
        ("just one string", "use embed_query"),
        ([None], r"texts\[0\] is NoneType"),
    ],
)
def test_non_strings_are_a_clear_error_before_any_request(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb, bad: Any, match: str
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu)
    with pytest.raises(EmbeddingInputError, match=match):
        emb.embed_documents(bad)
    with pytest.raises(TypeError):  # also a TypeError, for code that catches that
        emb.embed_query(3)  # type: ignore[arg-type]
    assert gpu.requests == [] and cpu.requests == []


def test_a_chat_model_gives_ollamas_own_error_without_failover(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_embeddings: MakeEmb
) -> None:
    gpu, cpu = pair
    emb = make_embeddings(gpu, cpu, model=CHAT)
    with pytest.raises(ollama.ResponseError) as info:
        emb.embed_documents(["a", "b"])
    assert info.value.status_code == 501
    assert "does not support embeddings" in str(info.value)
    assert len(embed_inputs(gpu)) == 1 and embed_inputs(cpu) == []
    stats = emb.shared_router.stats()["gpu"]
    assert stats["circuit"] == "closed" and stats["consecutive_failures"] == 0


# ------------------------------------------------------------------ one router with the chat
def test_shares_the_chat_models_router(
    pair: tuple[OllamaStandIn, OllamaStandIn], clock: FakeClock
) -> None:
    gpu, cpu = pair
    llm = HybridChatOllama(
        model=CHAT, backends=backends_for(gpu, cpu), clock=clock, background_probes=False
    )
    emb = HybridOllamaEmbeddings.from_chat_model(llm, model=EMBED)
    assert emb.shared_router is llm.router
    emb.embed_query("hello")
    gpu.stop()
    emb.embed_query("hello")  # fails over, and the GPU's failure is recorded once, for both
    stats = llm.stats()["gpu"]
    assert stats["failures"]["connect"] == 1
    assert llm.invoke("hi").response_metadata["backend"] == "cpu"
    with pytest.raises(Exception, match="not both"):
        HybridOllamaEmbeddings(model=EMBED, router=llm.router, backends=backends_for(gpu, cpu))
    llm.close()


def test_credentials_never_appear_in_repr_dump_errors_or_logs(
    ollama_standin_factory: StandInFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from langchain_contextharbor import BackendConfig

    caplog.set_level(logging.DEBUG)
    gpu, cpu = make_pair(ollama_standin_factory, cpu_digest=DIGEST_B)
    secret_url = gpu.url.replace("http://", "http://alice:pw-SECRET-1@")
    emb = HybridOllamaEmbeddings(
        model=EMBED,
        backends=[
            BackendConfig(name="gpu", base_url=secret_url, headers={"X-Api-Key": "tok-SECRET-2"}),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
        ],
        clock=clock,
        background_probes=False,
    )
    emb.embed_query("hello")  # credentials work: the GPU answered
    assert emb.last_batches[0].backend == "gpu"
    gpu.stop()
    with pytest.raises(EmbeddingDigestMismatchError) as info:
        emb.embed_query("again")
    by_env = HybridOllamaEmbeddings(model=EMBED, gpu_url=secret_url, cpu_url="")
    seen = [repr(emb), str(emb.model_dump()), str(info.value), caplog.text]
    seen += [repr(by_env), str(by_env.model_dump())]
    inner = emb._inner("gpu")  # the per-backend OllamaEmbeddings carries the header
    seen += [repr(inner), str(inner.model_dump()), inner.model_dump_json()]
    for text in seen:
        assert "SECRET" not in text

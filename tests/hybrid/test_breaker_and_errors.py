"""Circuit breakers over real HTTP with an injected clock, and the errors a caller sees."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from langchain_contextharbor import (
    AllBackendsFailedError,
    BackendConfig,
    BreakerPolicy,
    HybridChatOllama,
    ModelNotAvailableError,
    NoBackendAvailableError,
    Timeouts,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock

MODEL = "llama3.2:1b"

# Deadlines a loaded CI machine cannot run out of (a 0.6 s one could turn a slow answer into a
# timeout and a failover the test does not expect), except the first-token deadline of the
# hung GPU, which is how that test provokes the timeout: 2 s, paid once, still far above what
# a healthy answer (the later trial and call on the GPU) takes on a slow machine.
HUNG = Timeouts(connect=10.0, first_token=2.0, idle=30.0, probe=10.0)
ROOMY = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)


def test_hung_backend_is_paid_for_once_then_skipped_until_trial(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    clock: FakeClock,
) -> None:
    gpu, cpu = pair
    model = make_model(
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=HUNG),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=ROOMY),
        ],
        breaker=BreakerPolicy(cooldown=30),
    )
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK)  # every chat hangs until cleared
    first = model.invoke("a")
    assert first.response_metadata["backend"] == "cpu"
    assert len(gpu.requests_to("/api/chat")) == 1
    for _ in range(5):  # later calls pay nothing for the hung GPU
        msg = model.invoke("b")
        assert msg.response_metadata["backend"] == "cpu"
        assert msg.response_metadata["contextharbor"]["attempts"] == []
        skipped = msg.response_metadata["contextharbor"]["skipped"]
        assert skipped[0]["backend"] == "gpu" and "circuit open" in skipped[0]["reason"]
    assert len(gpu.requests_to("/api/chat")) == 1
    gpu.clear_faults()
    clock.advance(29)
    assert model.invoke("c").response_metadata["backend"] == "cpu"
    clock.advance(2)  # cooldown over: one trial call goes to the GPU (in the background,
    # so this call pays nothing for it) and succeeds
    assert model.invoke("d").response_metadata["backend"] == "cpu"
    assert model.router.trial_futures["gpu"].result(timeout=30) is True
    assert model.stats()["gpu"]["circuit"] == "closed"
    assert len(gpu.requests_to("/api/chat")) == 2
    assert model.invoke("e").response_metadata["backend"] == "gpu"


def test_failed_trial_reopens_with_backoff(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    clock: FakeClock,
) -> None:
    gpu, _ = pair
    model = make_model(timeouts=ROOMY, breaker=BreakerPolicy(cooldown=10, backoff=3))
    gpu.inject(Fault.REFUSE)
    assert model.invoke("a").response_metadata["backend"] == "cpu"
    clock.advance(10)
    trial = model.invoke("b")  # the trial runs in the background: refused again
    assert trial.response_metadata["contextharbor"]["attempts"] == []
    assert model.router.trial_futures["gpu"].result(timeout=30) is False
    s = model.stats()["gpu"]
    assert s["circuit"] == "open" and s["retry_in_s"] == pytest.approx(30)
    clock.advance(29)
    assert model.invoke("c").response_metadata["contextharbor"]["attempts"] == []
    gpu.clear_faults()
    clock.advance(1)
    assert model.invoke("d").response_metadata["backend"] == "cpu"
    assert model.router.trial_futures["gpu"].result(timeout=30) is True
    assert model.invoke("e").response_metadata["backend"] == "gpu"


def test_all_backends_failed_lists_every_attempt_and_chains(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, cpu = pair
    model = make_model(timeouts=ROOMY)
    gpu.inject(Fault.REFUSE)
    cpu.inject(Fault.OOM, count=1)
    with pytest.raises(AllBackendsFailedError) as info:
        model.invoke("x")
    err = info.value
    assert [(a.backend, a.category) for a in err.attempts] == [
        ("gpu", "connect"),
        ("cpu", "out_of_memory"),
    ]
    assert len(err.exceptions) == 2
    assert err.__cause__ is err.exceptions[-1]
    text = str(err)
    assert "gpu" in text and "cpu" in text and "ConnectError" in text and "ResponseError" in text
    assert cpu.url in text  # names what was tried
    # Then: both circuits? GPU open (connect counts), CPU closed (OOM is about the model).
    stats = model.stats()
    assert stats["gpu"]["circuit"] == "open" and stats["cpu"]["circuit"] == "closed"


def test_nothing_available_fails_fast_with_reasons(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, cpu = pair
    model = make_model(timeouts=ROOMY)
    gpu.inject(Fault.REFUSE)
    cpu.inject(Fault.REFUSE)
    with pytest.raises(AllBackendsFailedError):
        model.invoke("x")
    before = (len(gpu.requests), len(cpu.requests))
    with pytest.raises(NoBackendAvailableError) as info:
        model.invoke("y")
    assert "circuit open" in str(info.value)
    assert (len(gpu.requests), len(cpu.requests)) == before


def test_model_missing_everywhere_names_the_pull(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, cpu = pair
    model = make_model(timeouts=ROOMY)
    with pytest.raises(ModelNotAvailableError) as info:
        model.invoke("x", model="nosuchmodel:7b")
    msg = str(info.value)
    assert "ollama pull nosuchmodel:7b" in msg
    assert f"127.0.0.1:{gpu.port}" in msg and f"127.0.0.1:{cpu.port}" in msg
    # With fresh probes the router knows without sending a chat at all.
    model.refresh("nosuchmodel:7b")
    n = len(gpu.requests_to("/api/chat")) + len(cpu.requests_to("/api/chat"))
    with pytest.raises(ModelNotAvailableError):
        model.invoke("x", model="nosuchmodel:7b")
    assert len(gpu.requests_to("/api/chat")) + len(cpu.requests_to("/api/chat")) == n


def test_credentials_never_leak(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpu, cpu = pair
    caplog.set_level("DEBUG", logger="langchain_contextharbor")
    model = HybridChatOllama(
        model=MODEL,
        backends=[
            BackendConfig(
                name="gpu",
                base_url=f"http://alice:s3cr3t-pw@127.0.0.1:{gpu.port}",
                timeouts=ROOMY,
                headers={"X-Api-Key": "Bearer tok-XYZ"},
            ),
            BackendConfig(
                name="cpu",
                kind="cpu",
                base_url=f"http://bob:hunter2@127.0.0.1:{cpu.port}",
                timeouts=ROOMY,
            ),
        ],
        background_probes=False,
    )
    gpu.inject(Fault.CUT_MID_STREAM, count=1)
    msg = model.invoke("hi")
    gpu.inject(Fault.REFUSE)
    cpu.inject(Fault.REFUSE)
    with pytest.raises(AllBackendsFailedError) as info:
        model.invoke("again")
    blobs = [
        repr(model),
        str(model),
        str(msg.response_metadata),
        str(info.value),
        caplog.text,
        str(model.stats()),
        model.select_backend().explain(),
        str(model._identifying_params),
    ]
    for blob in blobs:
        for secret in ("s3cr3t-pw", "hunter2", "tok-XYZ"):
            assert secret not in blob
    model.close()


def test_two_event_loops_in_a_row(make_model: Callable[..., HybridChatOllama]) -> None:
    model = make_model(timeouts=ROOMY)

    async def once() -> str:
        return str((await model.ainvoke("hi")).response_metadata["backend"])

    assert asyncio.run(once()) == "gpu"
    assert asyncio.run(once()) == "gpu"  # a second loop must not hit "Event loop is closed"


def test_threads_share_one_model(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    model = make_model(timeouts=ROOMY)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                results.append(str(model.invoke("t").response_metadata["backend"]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 20
    s = model.stats()
    assert s["gpu"]["in_flight"] == 0 and s["cpu"]["in_flight"] == 0
    assert s["gpu"]["successes"] + s["cpu"]["successes"] == 20

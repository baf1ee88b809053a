"""Fleet mode against a real redis-server: several HybridChatOllama "workers" in this process
share one Redis and two stand-ins (real HTTP through ChatOllama), on one injected clock."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_contextharbor import (
    BackendConfig,
    BreakerPolicy,
    HybridChatOllama,
    SpeedPrior,
    Timeouts,
)
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory
from langchain_contextharbor.testing.redis_server import RedisServer

MODEL = "llama3.2:1b"
# Roomy: nothing here provokes a timeout (a loaded CI machine must not either).
T = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], gpu_fraction=1.0)
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], gpu_fraction=0.0)
    return gpu, cpu


Worker = Callable[..., HybridChatOllama]


@pytest.fixture
def worker(
    pair: tuple[OllamaStandIn, OllamaStandIn], redis_server: RedisServer
) -> Iterator[Worker]:
    """Make a worker (one HybridChatOllama with its own RedisSharedState) on one clock."""
    from langchain_contextharbor._fleet_redis import RedisSharedState

    made: list[HybridChatOllama] = []
    clock = FakeClock(1_000_000.0)

    def make(url: str | None = None, **kw: Any) -> HybridChatOllama:
        gpu, cpu = pair
        backends = [
            BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=T),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=T),
        ]
        shared = RedisSharedState(
            url or redis_server.url,
            ["gpu", "cpu"],
            max_parallel={"gpu": 1, "cpu": 1},
            clock=clock,
            lease_ttl=kw.pop("lease_ttl", 120.0),
            # These tests step faster than the 2 ms a view is reused for: always read; and
            # they look right after a release, so it is sent before release() returns.
            view_max_age=kw.pop("view_max_age", 0.0),
            async_release=kw.pop("async_release", False),
        )
        m = HybridChatOllama(
            model=MODEL,
            backends=backends,
            clock=clock,
            background_probes=False,
            breaker=BreakerPolicy(cooldown=30.0),
            shared_state=shared,
            # Equal speeds: spill-over only happens when the other server is expected to
            # finish sooner, and the default prior takes a GPU to be 10x faster.
            speed_prior=kw.pop("speed_prior", SpeedPrior(cpu_tokens_per_s=60.0)),
            **kw,
        )
        made.append(m)
        return m

    make.clock = clock  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for m in made:
            m.close()
            sh = m.router._shared
            if sh is not None:
                sh.close()


def test_redis_is_not_imported_without_fleet_mode(tmp_path: Any) -> None:
    code = (
        "import sys\n"
        "from langchain_contextharbor import HybridChatOllama\n"
        "m = HybridChatOllama(model='llama3.2:1b', background_probes=False)\n"
        "print(m.router._shared is None, 'redis' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CONTEXTHARBOR_REDIS_URL"}
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_env_var_turns_fleet_mode_on(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTEXTHARBOR_REDIS_URL", redis_server.url)
    m = HybridChatOllama(model=MODEL, background_probes=False)
    try:
        assert m.router._shared is not None
        assert m.router._shared.describe()["mode"] == "redis"
    finally:
        m.router._shared.close()


def test_in_flight_is_counted_fleet_wide_and_a_dead_workers_leases_expire(
    worker: Worker,
) -> None:
    a, b = worker(lease_ttl=60.0), worker(lease_ttl=60.0)
    assert a.select_backend().backends == ["gpu", "cpu"]
    assert a.router.acquire("gpu")  # worker A's call holds the GPU's only slot
    plan = b.select_backend()
    assert plan.backends == ["cpu", "gpu"], plan.explain()
    assert "1/1 in flight" in " ".join(plan.candidates[1].reasons)
    # Worker A dies without releasing: its lease stops counting after lease_ttl.
    worker.clock.advance(61)  # type: ignore[attr-defined]
    assert b.select_backend().backends == ["gpu", "cpu"]


def test_acquire_spills_over_on_fresh_fleet_counts(worker: Worker) -> None:
    a, b = worker(), worker()
    plan = b.select_backend()  # planned while the GPU was free ...
    assert a.router.acquire("gpu")  # ... then another worker took its only slot
    assert b.router.acquire("gpu", ["cpu"]) is False  # the CPU has a free slot: go there
    assert b.router.acquire("cpu", [])
    assert plan.primary == "gpu"
    # Both saturated: the last candidate queues (a call never fails for lack of a slot).
    assert b.router.acquire("gpu", [])


def test_the_fleet_acquire_spills_over_only_when_the_plan_would(worker: Worker) -> None:
    # Default prior: the GPU is taken to be ~10x faster, so a call waits for its slot
    # rather than run on the CPU, exactly as the plan orders it on the same counts.
    a, b = worker(), worker(speed_prior=SpeedPrior())
    assert a.router.acquire("gpu")
    plan = b.select_backend()
    assert plan.primary == "gpu", plan.explain()
    assert b.router.acquire("gpu", ["cpu"]) is True


def test_a_candidate_passed_over_for_a_freer_one_is_tried_again_last(
    worker: Worker, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    _, cpu = pair
    a, b = worker(), worker(view_max_age=3600.0)
    b.select_backend()  # b keeps this view (nothing in flight) for its next plan
    assert a.router.acquire("gpu")
    cpu.stop()
    # b plans gpu first on its old view; the acquire sees the GPU taken and the CPU free,
    # so the call goes to the CPU, which is dead: the GPU, passed over, is tried last.
    msg = b.invoke("hi")
    meta = msg.response_metadata["contextharbor"]
    assert meta["backend"] == "gpu"
    assert [x["backend"] for x in meta["attempts"]] == ["cpu"]


def test_one_workers_failure_opens_the_circuit_fleet_wide_with_one_trial(
    worker: Worker, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    gpu, _ = pair
    workers = [worker() for _ in range(3)]
    gpu.stop()
    first = workers[0].invoke("hi")
    attempts = first.response_metadata["contextharbor"]["attempts"]
    assert [x["backend"] for x in attempts] == ["gpu"]
    for w in workers[1:]:
        msg = w.invoke("hi")
        meta = msg.response_metadata["contextharbor"]
        assert meta["backend"] == "cpu" and meta["attempts"] == []
        assert any("circuit open" in s["reason"] for s in meta["skipped"])
    # After the cooldown one worker gets the trial call; the others skip the GPU meanwhile.
    gpu.start()
    worker.clock.advance(31)  # type: ignore[attr-defined]
    assert workers[1].router.acquire("gpu")  # the trial (still in flight)
    assert workers[2].router.acquire("gpu") is False
    assert workers[2].select_backend().backends == ["cpu"]
    workers[1].router.record_success("gpu", 0.01, None)
    workers[1].router.release("gpu")
    for w in workers:
        assert w.select_backend().primary == "gpu"


def test_learned_404_and_oom_marks_are_shared(
    worker: Worker, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    gpu, _ = pair
    a, b = worker(), worker()
    gpu.inject("oom", count=1)
    assert a.invoke("hi").response_metadata["backend"] == "cpu"
    plan = b.select_backend()
    assert plan.backends == ["cpu", "gpu"]
    assert "out-of-memory" in " ".join(plan.candidates[1].reasons)
    gpu.inject("model_not_found", count=1)
    d = worker(num_ctx=512)  # below the OOM context: only the 404 would keep it off
    assert d.invoke("hi").response_metadata["backend"] == "cpu"
    plan = b.select_backend(num_ctx=512)
    assert [s.backend for s in plan.skipped] == ["gpu"]
    assert "not found here (404" in plan.skipped[0].reason


def test_one_probe_per_backend_per_ttl_for_the_fleet(
    worker: Worker, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    gpu, cpu = pair
    workers = [worker() for _ in range(4)]
    for w in workers:
        w.refresh()
    assert len(gpu.requests_to("/api/version")) == 1
    assert len(cpu.requests_to("/api/version")) == 1
    assert all(w.router.get("gpu").probe is not None for w in workers)
    worker.clock.advance(11)  # past probe_ttl (10 s): one new probe, for everyone
    for w in workers:
        w.refresh()
    assert len(gpu.requests_to("/api/version")) == 2


def test_redis_killed_mid_run_never_fails_a_call_and_reconnects(
    worker: Worker, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = worker(), worker()
    assert a.invoke("hi").response_metadata["backend"] == "gpu"
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="langchain_contextharbor"):
        for _ in range(5):
            assert a.invoke("hi").response_metadata["backend"] == "gpu"
            assert b.invoke("hi").response_metadata["backend"] == "gpu"
    down = [r for r in caplog.records if "fleet state" in r.getMessage()]
    assert len(down) == 2, [r.getMessage() for r in down]  # once per worker, not per call
    assert a.router._shared.describe()["down"] is True  # type: ignore[union-attr]
    redis_server.start()  # back, same port, empty
    worker.clock.advance(2)  # type: ignore[attr-defined]
    a.invoke("hi")
    assert a.router._shared.describe()["down"] is False  # type: ignore[union-attr]
    assert a.router.acquire("gpu")
    b.select_backend()
    # Sharing again. (Not "b spills to the cpu": b has learned that the gpu stand-in
    # answers in about a millisecond, so waiting for it beats the cpu's prior.)
    assert b.stats()["gpu"]["fleet_in_flight"] == 1


def test_redis_credentials_are_never_shown(
    redis_server_factory: Callable[..., RedisServer],
    worker: Worker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "s3cr3t-fleet-pw"
    srv = redis_server_factory(password=secret)
    m = HybridChatOllama(model=MODEL, shared_state=srv.url, background_probes=False)
    wrong = srv.url.replace(secret, "wr0ng-" + secret)
    bad = worker(url=wrong)
    with caplog.at_level(logging.DEBUG, logger="langchain_contextharbor"):
        bad.select_backend()  # authentication fails: logged, decided locally
    shown = " ".join(
        [
            repr(m),
            str(m),
            json.dumps(m.model_dump(), default=str),
            repr(m.router._shared),
            json.dumps(m.router._shared.describe()),  # type: ignore[union-attr]
            json.dumps(bad.stats(), default=str),
            caplog.text,
        ]
    )
    assert "fleet state" in caplog.text
    assert secret not in shown
    m.router._shared.close()  # type: ignore[union-attr]


def test_a_new_worker_starts_with_the_speeds_the_fleet_learned(worker: Worker) -> None:
    a = worker()
    for _ in range(3):
        assert a.invoke("hi").response_metadata["backend"] == "gpu"
    assert ("gpu", MODEL) in a.router.speeds
    assert a.router.sync_speeds() == 0  # publishes; nothing new to take
    b = worker()
    assert ("gpu", MODEL) not in b.router.speeds
    assert b.router.sync_speeds() == 1
    assert b.router.speeds[("gpu", MODEL)] == a.router.speeds[("gpu", MODEL)]
    assert "learned" in " ".join(b.select_backend().candidates[0].reasons)


def test_releases_sent_in_the_background_reach_the_fleet(worker: Worker) -> None:
    a, b = worker(async_release=True), worker()
    for _ in range(3):
        assert a.router.acquire("gpu")
    for _ in range(3):
        a.router.release("gpu")
    a.router._shared.flush()  # type: ignore[union-attr]
    b.select_backend()
    assert b.stats()["gpu"]["fleet_in_flight"] == 0
    assert a.select_backend().primary == "gpu"
    a.router.acquire("gpu")
    a.router.release("gpu")
    a.close()  # flushes the queued release; the model stays usable, still in fleet mode
    b.select_backend()
    assert b.stats()["gpu"]["fleet_in_flight"] == 0
    assert a.invoke("hi").response_metadata["backend"] == "gpu"
    assert a.router._shared.describe()["down"] is False  # type: ignore[union-attr]

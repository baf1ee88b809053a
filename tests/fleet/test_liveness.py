"""A fleet that cannot lose a backend (issue 17, item 4), against a real redis-server.

* A worker killed while it holds the fleet's trial call (a real process, SIGKILLed inside the
  trial) costs the other workers that backend for at most ``trial_ttl``: every expiry is a time
  in the value, on the fleet clock, and a view reads the details again once it has passed (an
  expiry bumps no version counter, so before, the trial stayed "busy" for good).
* Leases released while Redis is paused (SIGSTOP) are released when it resumes (SIGCONT), not
  counted as load until they expire; so is the lease of an acquire whose reply never came.

The workers in this process run on injected clocks (router and fleet), so nothing here waits
out a TTL; the killed worker runs on the real ones, and the parent's fleet clock starts at the
real time, so both speak of the same instants.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_contextharbor import BackendConfig, BreakerPolicy, HybridChatOllama, Timeouts
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory
from langchain_contextharbor.testing.redis_server import RedisServer

MODEL = "llama3.2:1b"
T = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
HOLDER = Path(__file__).with_name("trial_holder.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], gpu_fraction=1.0)
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], gpu_fraction=0.0)
    return gpu, cpu


Worker = Callable[..., HybridChatOllama]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())  # the fleet clock of a real process is time.time()


@pytest.fixture
def worker(
    pair: tuple[OllamaStandIn, OllamaStandIn], redis_server: RedisServer, clock: FakeClock
) -> Iterator[Worker]:
    """A worker in this process: one HybridChatOllama with its own store, on ``clock``."""
    from langchain_contextharbor._fleet_redis import RedisSharedState

    made: list[HybridChatOllama] = []

    def make(**kw: Any) -> HybridChatOllama:
        gpu, cpu = pair
        shared = RedisSharedState(
            redis_server.url,
            ["gpu", "cpu"],
            clock=clock,
            view_max_age=0.0,
            async_release=kw.pop("async_release", False),
            trial_ttl=30.0,
        )
        m = HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=T),
                BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=T),
            ],
            clock=clock,
            background_probes=False,
            background_trials=False,
            breaker=kw.pop("breaker", BreakerPolicy(cooldown=1.0)),
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


def _redis(server: RedisServer) -> Any:
    import redis

    return redis.Redis.from_url(server.url, socket_timeout=5)


TRIAL_KEY = "contextharbor:default:trial:gpu"
LEASE_KEY = "contextharbor:default:lease:gpu"


def test_a_worker_killed_holding_the_trial_costs_the_fleet_at_most_one_trial_ttl(
    worker: Worker,
    pair: tuple[OllamaStandIn, OllamaStandIn],
    redis_server: RedisServer,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    gpu, cpu = pair
    b = worker()
    gpu.inject(Fault.REFUSE)
    assert b.invoke("hi").response_metadata["backend"] == "cpu"  # the GPU's circuit opens
    gpu.clear_faults()  # the GPU heals ...
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK, count=1)  # ... but the trial call will hang

    before = len(gpu.requests_to("/api/chat"))
    cfg = tmp_path / "holder.json"
    cfg.write_text(
        json.dumps({"model": MODEL, "urls": [gpu.url, cpu.url], "redis": redis_server.url})
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CONTEXTHARBOR_REDIS_URL", None)
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), str(cfg)], env=env, stderr=subprocess.PIPE
    )
    r = _redis(redis_server)
    try:
        prefix = f"{socket.gethostname()}:{holder.pid}:".encode()
        deadline = time.monotonic() + 120  # a safety net for a crashed child, not a wait
        while not (r.hget(TRIAL_KEY, "m") or b"").startswith(prefix):
            assert holder.poll() is None, holder.stderr.read() if holder.stderr else ""
            assert time.monotonic() < deadline, "the holder never took the trial"
            time.sleep(0.01)
        while len(gpu.requests_to("/api/chat")) == before:  # its trial reached the GPU, hangs
            assert time.monotonic() < deadline, "the trial call never reached the GPU"
            time.sleep(0.01)
        holder.send_signal(signal.SIGKILL)  # killed inside its trial call
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
    gpu.clear_faults()
    expiry = float(r.hget(TRIAL_KEY, "exp"))
    sent = len(gpu.requests_to("/api/chat"))

    clock.advance(2)  # past b's own cooldown: only the dead worker's trial keeps b off
    assert clock.now < expiry
    msg = b.invoke("hi")
    assert msg.response_metadata["backend"] == "cpu"
    assert len(gpu.requests_to("/api/chat")) == sent
    clock.advance(expiry - clock.now + 0.5)  # the dead worker's trial expires
    msg = b.invoke("hi")
    assert msg.response_metadata["backend"] == "gpu", (
        msg.response_metadata["contextharbor"],
        b.router.stats()["gpu"],
        b.select_backend().explain(),
    )
    assert b.router.get("gpu").breaker.state == "closed"
    # The fleet has its GPU back: a worker that joins now plans it first.
    assert worker().select_backend().primary == "gpu"


def test_a_trial_held_by_a_living_worker_is_renewed_and_stays_its_own(
    worker: Worker, pair: tuple[OllamaStandIn, OllamaStandIn], clock: FakeClock
) -> None:
    gpu, _ = pair
    a, b = worker(), worker()
    gpu.inject(Fault.REFUSE)
    a.invoke("hi")
    assert b.select_backend().backends == ["cpu"]  # b adopts the fleet's open circuit
    gpu.clear_faults()
    clock.advance(2)
    assert a.router.acquire("gpu")  # a's trial, still running
    assert b.router.acquire("gpu") is False
    for _ in range(3):  # a's trial runs long; its renewer keeps it a's
        clock.advance(20)
        assert a.router._shared.renew_leases() == 1  # type: ignore[union-attr]
        assert b.select_backend().primary == "cpu"
        assert b.router.acquire("gpu") is False
    a.router.record_success("gpu", 0.01, None)
    a.router.release("gpu")
    assert b.select_backend().primary == "gpu"


def test_every_expiry_is_noticed_without_a_version_change(
    worker: Worker, pair: tuple[OllamaStandIn, OllamaStandIn], clock: FakeClock
) -> None:
    """A trial whose holder vanished, in one process: b notices the expiry by itself."""
    gpu, _ = pair
    a, b = worker(), worker()
    gpu.inject(Fault.REFUSE)
    a.invoke("hi")
    assert b.select_backend().backends == ["cpu"]
    gpu.clear_faults()
    clock.advance(2)
    assert a.router.acquire("gpu")  # a's trial; a then vanishes (never renews, never releases)
    assert b.select_backend().backends == ["cpu"]
    clock.advance(29)
    assert b.select_backend().backends == ["cpu"]  # no version changed, nothing expired yet
    clock.advance(1.5)
    assert b.select_backend().primary == "gpu"  # expired: read again, the trial is free
    assert b.invoke("hi").response_metadata["backend"] == "gpu"


def test_leases_released_while_redis_is_paused_are_released_when_it_resumes(
    worker: Worker, redis_server: RedisServer, clock: FakeClock
) -> None:
    a = worker(async_release=True)  # the default: releases go out on a background thread
    r = _redis(redis_server)
    for _ in range(3):
        assert a.router.acquire("gpu")
    assert r.zcard(LEASE_KEY) == 3
    assert redis_server.pid is not None
    os.kill(redis_server.pid, signal.SIGSTOP)  # Redis hangs: every round trip times out
    try:
        for _ in range(3):
            a.router.release("gpu")
        a.router.acquire("gpu")  # its reply never comes; paused Redis runs it on resume
        a.router.release("gpu")
        a.router._shared.flush()  # type: ignore[union-attr]
        assert a.router._shared.describe()["down"] is True  # type: ignore[union-attr]
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    clock.advance(60)  # past the store's back-off: the next plan reads the fleet again
    a.select_backend()
    a.router._shared.flush()  # type: ignore[union-attr]
    assert r.zcard(LEASE_KEY) == 0  # before: 3 to 4 phantom calls until lease_ttl
    assert a.router._shared.describe()["unsent_releases"] == 0  # type: ignore[union-attr]
    assert a.stats()["gpu"]["fleet_in_flight"] == 0

"""Speed calibration over real HTTP: when the speed prior alone keeps a saturated GPU's
calls off a free CPU, the router measures the CPU with one short background request, and
the following plans decide on what it measured.

Two stand-ins with one slot each; clocks are injected (cooldowns move by ``advance``), and
nothing sleeps to wait for a timeout: tests wait on the calibration's own future."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_contextharbor import BackendConfig, HybridChatOllama, Timeouts
from langchain_contextharbor._background import CALIBRATION_PROMPT, CALIBRATION_TOKENS
from langchain_contextharbor.sizing import GIB
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.fake_nvml import FakeNVML
from langchain_contextharbor.testing.pytest_plugin import StandInFactory
from langchain_contextharbor.testing.redis_server import RedisServer

T = Timeouts(connect=0.5, first_token=5.0, idle=2.0, probe=2.0)
SMALL = "llama3.2:1b"

Build = Callable[..., tuple[HybridChatOllama, OllamaStandIn, OllamaStandIn]]


@pytest.fixture
def build(ollama_standin_factory: StandInFactory, clock: FakeClock) -> Iterator[Build]:
    """A fresh model (default prior: GPU 10x faster) over a GPU and a CPU stand-in."""
    made: list[HybridChatOllama] = []

    def _build(
        *,
        gpu_delay: float = 0.005,
        cpu_delay: float = 0.005,
        **kw: Any,
    ) -> tuple[HybridChatOllama, OllamaStandIn, OllamaStandIn]:
        g = ollama_standin_factory(
            name="gpu", models=[SMALL], loaded=[SMALL], gpu_fraction=1.0, token_delay=gpu_delay
        )
        c = ollama_standin_factory(
            name="cpu", models=[SMALL], loaded=[SMALL], gpu_fraction=0.0, token_delay=cpu_delay
        )
        params: dict[str, Any] = {
            "model": SMALL,
            "backends": [
                BackendConfig(name="gpu", base_url=g.url, kind="gpu", timeouts=T),
                BackendConfig(name="cpu", base_url=c.url, kind="cpu", timeouts=T),
            ],
            "clock": clock,
            "nvml": FakeNVML.from_fixture(fail_init=True),
            "host_memory": lambda: 512 * GIB,
            "first_probe_wait": 10.0,  # returns as soon as the probes are in
        }
        params.update(kw)
        m = HybridChatOllama(**params)
        made.append(m)
        return m, g, c

    yield _build
    for m in made:
        m.close()


def _burst(model: HybridChatOllama, n: int) -> list[str]:
    async def go() -> list[str]:
        msgs = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(n)))
        return [m.response_metadata["backend"] for m in msgs]

    return asyncio.run(go())


def _calibrations(srv: OllamaStandIn) -> list[Any]:
    """The calibration requests in a stand-in's log (the fixed prompt, 16 tokens)."""
    out = []
    for r in srv.requests_to("/api/chat"):
        body = r.body if isinstance(r.body, dict) else {}
        if (body.get("options") or {}).get("num_predict") == CALIBRATION_TOKENS and body.get(
            "messages"
        ) == [{"role": "user", "content": CALIBRATION_PROMPT}]:
            out.append(r)
    return out


def _settle(model: HybridChatOllama, name: str) -> bool | None:
    """Wait for the calibration of ``name`` (its own future, not a sleep); None: none ran."""
    fut = model.router.calibration_futures.get(name)
    return None if fut is None else fut.result(timeout=30)


def test_equal_speeds_the_cpu_gets_measured_and_the_next_burst_spills_over(
    build: Build,
) -> None:
    model, gpu, cpu = build(gpu_delay=0.01, cpu_delay=0.01)
    _burst(model, 4)  # the prior (GPU 10x faster) keeps it on the saturated GPU...
    assert _settle(model, "cpu") is True  # ...and the CPU gets measured meanwhile
    (req,) = _calibrations(cpu)
    assert req.status == 200 and req.body["stream"] is True
    st = model.stats()["cpu"]
    assert st["calibrations"] == {"sent": 1, "failed": 0}
    assert st["requests"] == 0 and st["in_flight"] == 0  # not a user call; slot released
    speed = st["speeds"][SMALL]
    assert speed["samples"] == 1 and 20 < speed["tokens_per_s"] < 150  # 10 ms per token
    assert speed["answer_tokens"] != CALIBRATION_TOKENS  # a cut answer teaches no length
    assert _calibrations(gpu) == []  # the GPU was measured by the real calls
    used = _burst(model, 4)
    assert "cpu" in used, used  # evidence, not the prior: equal servers share the burst
    assert len(_calibrations(cpu)) == 1  # measured once; real calls teach it from here
    # The plan says what it was made from.
    model.router.acquire("gpu")
    try:
        plan = model.select_backend()
    finally:
        model.router.release("gpu")
    assert plan.primary == "cpu", plan.explain()
    assert "learned" in " ".join(plan.candidates[0].reasons)


def test_a_gpu_twenty_times_faster_is_measured_so_and_keeps_every_call(build: Build) -> None:
    model, _, cpu = build(gpu_delay=0.001, cpu_delay=0.03)
    assert _burst(model, 6) == ["gpu"] * 6
    assert _settle(model, "cpu") is True
    cpu_speed = model.stats()["cpu"]["speeds"][SMALL]
    gpu_speed = model.stats()["gpu"]["speeds"][SMALL]
    assert cpu_speed["tokens_per_s"] < 40  # 30 ms per token
    assert gpu_speed["tokens_per_s"] > 4 * cpu_speed["tokens_per_s"]
    assert _burst(model, 6) == ["gpu"] * 6  # measured slow: spill-over would not pay
    model.router.acquire("gpu")
    try:
        plan = model.select_backend()
    finally:
        model.router.release("gpu")
    assert plan.primary == "gpu" and plan.unmeasured == ()
    assert any(n.startswith("no spill-over: gpu") for n in plan.notes), plan.explain()
    assert "(learned, 1 calls)" in " ".join(plan.candidates[1].reasons)
    assert len(cpu.requests_to("/api/chat")) == 1 == len(_calibrations(cpu))


def test_no_calibration_without_saturation_then_one_with_it(build: Build) -> None:
    model, _, cpu = build()
    for _ in range(3):  # one call at a time: the GPU always has its slot free
        assert model.invoke("hi").response_metadata["backend"] == "gpu"
    assert model.router.calibration_futures == {} and cpu.requests_to("/api/chat") == []
    assert model.select_backend().unmeasured == ()
    _burst(model, 3)
    assert _settle(model, "cpu") is True and len(_calibrations(cpu)) == 1


def test_switched_off_the_prior_decides_and_nothing_is_sent(build: Build) -> None:
    model, _, cpu = build(calibrate_speeds=False)
    assert _burst(model, 4) == ["gpu"] * 4
    model.router.acquire("gpu")
    try:
        plan = model.select_backend()
    finally:
        model.router.release("gpu")
    assert plan.unmeasured == ("cpu",)  # the planner still says what it rests on
    assert model.router.calibrate(plan.unmeasured, SMALL) == []
    assert cpu.requests_to("/api/chat") == [] and model.router.calibration_futures == {}
    assert "cpu" not in [n for n, _ in model.router.speeds]


def test_no_calibration_of_a_down_backend_or_an_open_circuit(
    build: Build, clock: FakeClock
) -> None:
    model, _, cpu = build()
    r = model.router
    cpu.inject(Fault.REFUSE)
    model.refresh()  # the probe fails: down
    assert r.calibrate(["cpu"], SMALL) == []
    assert _burst(model, 3) == ["gpu"] * 3 and r.calibration_futures == {}
    cpu.clear_faults()
    model.refresh()
    r.get("cpu").breaker.record_failure(clock())  # open circuit (a failed call)
    assert model.stats()["cpu"]["circuit"] == "open"
    assert r.calibrate(["cpu"], SMALL) == []
    r.reset("cpu")
    assert r.acquire("cpu")  # no free slot: it would queue behind a call
    try:
        assert r.calibrate(["cpu"], SMALL) == []
    finally:
        r.release("cpu")
    assert r.calibrate(["cpu"], SMALL) == ["cpu"]
    assert r.calibrate(["cpu"], SMALL) == []  # one in flight per backend
    assert _settle(model, "cpu") is True
    assert r.calibrate(["cpu"], SMALL) == []  # measured: nothing left to learn
    assert len(_calibrations(cpu)) == 1


def test_a_failed_calibration_opens_no_circuit_leaks_no_slot_and_waits_its_cooldown(
    build: Build, clock: FakeClock
) -> None:
    model, _, cpu = build()
    cpu.inject(Fault.HTTP_ERROR, status=500)  # every chat fails; probes still answer
    _burst(model, 3)
    assert _settle(model, "cpu") is False
    st = model.stats()["cpu"]
    assert st["calibrations"] == {"sent": 1, "failed": 1}
    assert st["circuit"] == "closed" and st["consecutive_failures"] == 0
    assert st["in_flight"] == 0 and model.router.get("cpu").in_flight == 0
    assert st["requests"] == 0 and st["speeds"] == {}
    _burst(model, 3)  # within the cooldown: not again
    assert model.stats()["cpu"]["calibrations"]["sent"] == 1
    cpu.clear_faults()
    clock.advance(301)
    model.refresh()
    _burst(model, 3)
    assert _settle(model, "cpu") is True
    assert model.stats()["cpu"]["calibrations"] == {"sent": 2, "failed": 1}
    assert model.stats()["cpu"]["speeds"][SMALL]["samples"] == 1


def test_a_hung_calibration_holds_its_slot_until_its_deadline_then_frees_it(
    build: Build,
) -> None:
    model, _, cpu = build(warm_first_token_timeout=0.2)
    model.refresh()  # probes in: /api/ps lists the model on the cpu (the warm deadline)
    cpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK)
    r = model.router
    assert r.calibrate(["cpu"], SMALL) == ["cpu"]
    assert r.get("cpu").in_flight == 1  # plans see the slot taken
    assert model.select_backend().candidates[1].reasons[1].startswith("saturated (1/1")
    assert _settle(model, "cpu") is False  # the warm deadline (0.2 s), not a sleep
    assert r.get("cpu").in_flight == 0 and model.stats()["cpu"]["circuit"] == "closed"
    cpu.clear_faults()


def test_a_calibrated_speed_spreads_to_the_fleet(
    build: Build, redis_server: RedisServer, clock: FakeClock
) -> None:
    from langchain_contextharbor._fleet_redis import RedisSharedState

    def shared() -> RedisSharedState:
        return RedisSharedState(
            redis_server.url,
            ["gpu", "cpu"],
            max_parallel={"gpu": 1, "cpu": 1},
            clock=clock,
            view_max_age=0.0,
        )

    a, gpu, cpu = build(shared_state=shared())
    a.refresh()
    assert a.router.calibrate(["cpu"], SMALL) == ["cpu"]
    assert _settle(a, "cpu") is True
    assert a.router.sync_speeds() == 0  # publishes what it measured
    b = HybridChatOllama(
        model=SMALL,
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=T),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=T),
        ],
        clock=clock,
        nvml=FakeNVML.from_fixture(fail_init=True),
        shared_state=shared(),
    )
    try:
        b.refresh()  # healthy, so only the fleet's measure stops a calibration
        assert b.router.sync_speeds() >= 1
        assert b.router.speeds[("cpu", SMALL)] == a.router.speeds[("cpu", SMALL)]
        assert b.router.calibrate(["cpu"], SMALL) == []  # the fleet measured it already
    finally:
        b.close()
    assert len(_calibrations(cpu)) == 1

"""Routing judgement in the situations a GPU + CPU pair meets daily, over real HTTP:
the first call of a fresh instance, recovery after an outage, learned speeds, warm hangs.

Clocks are injected; nothing here sleeps to wait for a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_contextharbor import BackendConfig, HybridChatOllama, SpeedPrior, Timeouts
from langchain_contextharbor.sizing import GIB
from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.fake_nvml import FakeNVML
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

T = Timeouts(connect=0.5, first_token=5.0, idle=2.0, probe=2.0)
SMALL = "llama3.2:1b"
QWEN = "qwen2.5:7b"

Build = Callable[..., tuple[HybridChatOllama, OllamaStandIn, OllamaStandIn]]


@pytest.fixture
def build(ollama_standin_factory: StandInFactory, clock: FakeClock) -> Iterator[Build]:
    """A fresh model over a new GPU and CPU stand-in; background probes ON (the default)."""
    made: list[HybridChatOllama] = []

    def _build(
        gpu_models: list[Any],
        cpu_models: list[Any],
        *,
        gpu: dict[str, Any] | None = None,
        cpu: dict[str, Any] | None = None,
        timeouts: Timeouts = T,
        gpu_timeouts: Timeouts | None = None,
        **kw: Any,
    ) -> tuple[HybridChatOllama, OllamaStandIn, OllamaStandIn]:
        g = ollama_standin_factory(name="gpu", models=gpu_models, gpu_fraction=1.0, **(gpu or {}))
        c = ollama_standin_factory(name="cpu", models=cpu_models, gpu_fraction=0.0, **(cpu or {}))
        params: dict[str, Any] = {
            "model": SMALL,
            "backends": [
                BackendConfig(
                    name="gpu", base_url=g.url, kind="gpu", timeouts=gpu_timeouts or timeouts
                ),
                BackendConfig(name="cpu", base_url=c.url, kind="cpu", timeouts=timeouts),
            ],
            "clock": clock,
            "nvml": FakeNVML.from_fixture(fail_init=True),  # capacity unknown: size rules
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


# ---------------------------------------------------------------- first call on facts
def test_first_call_of_a_fresh_instance_skips_a_gpu_without_the_model(build: Build) -> None:
    model, gpu, _ = build([SMALL], [SMALL, QWEN], model=QWEN)
    msg = model.invoke("hi")
    meta = msg.response_metadata["contextharbor"]
    assert msg.response_metadata["backend"] == "cpu"
    assert meta["attempts"] == []
    assert any("not in this server's /api/tags" in s["reason"] for s in meta["skipped"])
    assert gpu.requests_to("/api/chat") == []


def test_first_async_call_of_a_fresh_instance_skips_a_gpu_without_the_model(
    build: Build,
) -> None:
    model, gpu, _ = build([SMALL], [SMALL, QWEN], model=QWEN)
    msg = asyncio.run(model.ainvoke("hi"))
    assert msg.response_metadata["backend"] == "cpu"
    assert msg.response_metadata["contextharbor"]["attempts"] == []
    assert gpu.requests_to("/api/chat") == []


def test_first_stream_of_a_fresh_instance_skips_a_gpu_without_the_model(build: Build) -> None:
    model, gpu, _ = build([SMALL], [SMALL, QWEN], model=QWEN)

    async def go() -> str:
        first = None
        async for chunk in model.astream("hi"):
            first = first or chunk.response_metadata.get("backend")
        return str(first)

    assert asyncio.run(go()) == "cpu"
    chunks = list(model.stream("again"))
    assert chunks[0].response_metadata["backend"] == "cpu"
    assert gpu.requests_to("/api/chat") == []


def test_first_call_sizes_an_unlisted_model_from_tags(build: Build) -> None:
    custom = StandInModel("my-model:latest", size=30 * GIB, parameter_size="34B")
    model, gpu, _ = build([SMALL, custom], [SMALL, custom], model="my-model")
    plan = model.select_backend()
    assert plan.backends == ["cpu", "gpu"], plan.explain()
    assert "/api/tags" in plan.request.size_detail
    assert model.invoke("hi").response_metadata["backend"] == "cpu"
    assert gpu.requests_to("/api/chat") == []


def test_the_first_probe_wait_is_bounded(build: Build) -> None:
    # The GPU accepts and never answers, its probe would take the whole 2 s probe timeout:
    # the first plan waits only first_probe_wait, then plans with what it has.
    model, gpu, _ = build([SMALL], [SMALL, QWEN], model=QWEN, first_probe_wait=0.05)
    gpu.inject(Fault.ACCEPT_HANG)
    model.select_backend()
    assert model.router.get("gpu").probe is None  # still in flight
    assert model.router._prober.primed  # later plans never wait
    gpu.clear_faults()


def test_no_wait_when_probes_are_off(build: Build) -> None:
    model, _, _ = build([SMALL], [SMALL, QWEN], model=QWEN, background_probes=False)
    model.select_backend()
    assert all(b.probe is None and b.probe_future is None for b in model.router.backends)


# ---------------------------------------------------------------- recovery on evidence
def test_a_successful_probe_makes_the_next_call_the_trial(build: Build, clock: FakeClock) -> None:
    model, gpu, _ = build([SMALL], [SMALL])
    model.select_backend()  # first probes: both up
    gpu.inject(Fault.REFUSE)
    assert model.invoke("a").response_metadata["backend"] == "cpu"
    assert model.stats()["gpu"]["circuit"] == "open"
    gpu.clear_faults()  # the server is back, 1 s into a 15 s cooldown
    clock.advance(1)
    model.refresh()
    assert model.stats()["gpu"]["circuit"] == "half_open"
    plan = model.select_backend()
    assert plan.primary == "gpu"
    assert any("trial call" in r for r in plan.candidates[0].reasons)
    # The trial runs in the background (it costs this call nothing); its success closes it.
    assert model.invoke("b").response_metadata["backend"] == "cpu"
    assert model.router.trial_futures["gpu"].result(timeout=30) is True
    assert model.stats()["gpu"]["circuit"] == "closed"
    assert model.invoke("c").response_metadata["backend"] == "gpu"


def test_a_probe_that_answers_while_chat_hangs_gives_one_early_trial_only(
    build: Build, clock: FakeClock
) -> None:
    # 0.2 s on the hung GPU only: the CPU's answers keep a deadline a loaded machine meets.
    model, gpu, _ = build(
        [SMALL], [SMALL], gpu_timeouts=Timeouts(connect=0.5, first_token=0.2, probe=2.0)
    )
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK)  # /api/tags keeps answering, chat hangs
    assert model.invoke("a").response_metadata["backend"] == "cpu"
    model.refresh()  # ok: the early trial is granted (in the background)...
    assert model.invoke("b").response_metadata["backend"] == "cpu"
    assert model.router.trial_futures["gpu"].result(timeout=30) is False  # ...and fails
    assert model.stats()["gpu"]["circuit"] == "open"
    clock.advance(1)
    model.refresh()  # answers again, but nothing new was learned: the backoff stands
    assert model.stats()["gpu"]["circuit"] == "open"
    assert len(gpu.requests_to("/api/chat")) == 2
    gpu.clear_faults()


def test_calls_recover_as_soon_as_both_servers_are_back(build: Build, clock: FakeClock) -> None:
    model, gpu, cpu = build([SMALL], [SMALL])
    model.select_backend()  # first probes: both up
    gpu.inject(Fault.REFUSE)
    cpu.inject(Fault.REFUSE)
    with pytest.raises(Exception, match="connect"):
        model.invoke("a")
    with pytest.raises(Exception, match=r"circuit open, trial call in 15\.0s"):
        model.invoke("b")
    clock.advance(0.5)
    with pytest.raises(Exception, match=r"trial call in 14\.5s"):  # tells the truth
        model.invoke("c")
    gpu.clear_faults()
    cpu.clear_faults()
    clock.advance(1)  # 13.5 s of cooldown left; the call re-probes and finds them up
    # The gpu's trial runs in the background; the cpu, last candidate, takes this call.
    assert model.invoke("d").response_metadata["backend"] == "cpu"
    assert model.router.trial_futures["gpu"].result(timeout=30) is True
    assert model.invoke("d2").response_metadata["backend"] == "gpu"

    gpu.inject(Fault.REFUSE)
    cpu.inject(Fault.REFUSE)
    with pytest.raises(Exception, match="connect"):
        asyncio.run(model.ainvoke("e"))
    gpu.clear_faults()
    cpu.clear_faults()
    clock.advance(1)
    assert asyncio.run(model.ainvoke("f")).response_metadata["backend"] == "cpu"
    assert model.router.trial_futures["gpu"].result(timeout=30) is True


def test_tags_listing_a_model_clears_a_remembered_404(build: Build) -> None:
    model, gpu, _ = build(["other:1b"], [SMALL], background_probes=False)
    assert model.invoke("a").response_metadata["backend"] == "cpu"  # 404 learned on the gpu
    gpu.add_model(SMALL)  # ollama pull
    assert model.invoke("b").response_metadata["backend"] == "cpu"  # still remembered
    model.refresh()
    assert model.select_backend().primary == "gpu"
    assert model.invoke("c").response_metadata["backend"] == "gpu"


def test_reset_forgets_learned_failures(build: Build) -> None:
    from langchain_contextharbor import ConfigurationError

    model, gpu, _ = build(["other:1b"], [SMALL], background_probes=False)
    gpu.inject(Fault.REFUSE)
    assert model.invoke("a").response_metadata["backend"] == "cpu"
    gpu.clear_faults()
    assert model.select_backend().backends == ["cpu"]
    with pytest.raises(ConfigurationError, match="no backend named 'nope'"):
        model.reset("nope")
    model.reset("cpu")  # not the one that failed
    assert model.select_backend().backends == ["cpu"]
    model.reset("gpu")
    assert model.select_backend().backends == ["gpu", "cpu"]
    assert model.invoke("b").response_metadata["backend"] == "cpu"  # 404 this time
    model.reset()
    assert model.select_backend().backends == ["gpu", "cpu"]


# ---------------------------------------------------------------- expected finish time
def _burst(model: HybridChatOllama, n: int) -> list[str]:
    async def go() -> list[str]:
        msgs = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(n)))
        return [m.response_metadata["backend"] for m in msgs]

    return asyncio.run(go())


def test_a_batch_stays_on_a_gpu_twenty_times_faster(build: Build) -> None:
    model, _, cpu = build(
        [SMALL],
        [SMALL],
        gpu={"token_delay": 0.001, "loaded": [SMALL]},
        cpu={"token_delay": 0.02, "loaded": [SMALL]},
    )
    assert _burst(model, 6) == ["gpu"] * 6  # the prior: a GPU much faster than a CPU
    learned = model.stats()["gpu"]["speeds"][SMALL]
    assert learned["samples"] == 6 and learned["tokens_per_s"] > 200
    assert _burst(model, 6) == ["gpu"] * 6  # and what it measured agrees
    assert model.stats()["cpu"]["requests"] == 0  # no user call; its speed calibration only
    assert len(cpu.requests_to("/api/chat")) <= 1


def test_learned_speeds_are_shown_and_drive_spill_over(build: Build) -> None:
    equal = SpeedPrior(gpu_tokens_per_s=50, cpu_tokens_per_s=50, cpu_first_token_s=0.15)
    model, _, _ = build(
        [SMALL],
        [SMALL],
        gpu={"token_delay": 0.004, "loaded": [SMALL]},
        cpu={"token_delay": 0.004, "loaded": [SMALL]},
        speed_prior=equal,
    )
    used = _burst(model, 4)
    assert sorted(used) == ["cpu", "cpu", "gpu", "gpu"]  # equal speeds: spill-over pays
    speeds = {n: model.stats()[n]["speeds"][SMALL] for n in ("gpu", "cpu")}
    assert all(s["samples"] == 2 for s in speeds.values())
    msg = model.invoke("hi")
    reason = msg.response_metadata["contextharbor"]["reason"]
    assert "expected to finish in" in reason and "(learned, 2 calls)" in reason
    # While a call is in flight on the gpu, the plan says why the next one goes elsewhere.
    model.router.acquire("gpu")
    try:
        plan = model.select_backend()
    finally:
        model.router.release("gpu")
    assert plan.primary == "cpu", plan.explain()
    assert any(n.startswith("spill-over: cpu expected to finish in") for n in plan.notes)


# ---------------------------------------------------------------- warm first-token deadline
LONG = Timeouts(connect=0.5, first_token=30.0, idle=2.0, probe=2.0)
# The warm deadline is router-wide: once the CPU has answered it judges the CPU's answers
# too, so it must be one a loaded CI machine meets there (0.2 s was not always), and still far
# below the 30 s cold one.
WARM = 1.0


def test_a_hung_warm_gpu_costs_the_warm_deadline_not_the_cold_one(build: Build) -> None:
    model, gpu, _ = build(
        [SMALL], [SMALL], gpu={"loaded": [SMALL]}, timeouts=LONG, warm_first_token_timeout=WARM
    )
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK)  # accepts, never answers; /api/ps says loaded
    msg = model.invoke("hi")
    assert msg.response_metadata["backend"] == "cpu"
    (attempt,) = msg.response_metadata["contextharbor"]["attempts"]
    assert attempt["category"] == "timeout"
    assert "warm first-token deadline 1.0s: model loaded (/api/ps)" in attempt["message"]
    assert attempt["elapsed_ms"] < 10_000  # not the 30 s one
    gpu.clear_faults()


def test_a_cold_load_still_gets_the_long_deadline(build: Build) -> None:
    model, gpu, _ = build([SMALL], [SMALL], timeouts=LONG, warm_first_token_timeout=0.05)
    gpu.inject(Fault.SLOW_FIRST_TOKEN, count=1, delay=0.3)  # a load: not in /api/ps
    msg = model.invoke("hi")
    assert msg.response_metadata["backend"] == "gpu"
    assert msg.response_metadata["contextharbor"]["attempts"] == []


def test_when_the_warm_deadline_applies(build: Build, clock: FakeClock) -> None:
    model, _, _ = build([SMALL], [SMALL], timeouts=LONG, background_probes=False)
    r = model.router
    assert r.first_token_deadline("gpu", SMALL) == (
        None,
        "cold deadline: the server has not answered recently",
    )
    model.invoke("hi")  # answered: the model is loaded there now
    deadline, why = r.first_token_deadline("gpu", SMALL)
    assert deadline == 10.0 and why == "model answered here recently"  # the floor
    assert r.first_token_deadline("gpu", "other:1b")[0] is None  # may have to load
    assert r.acquire("gpu") and r.acquire("gpu")  # a call queued ahead on the one slot
    try:
        assert r.first_token_deadline("gpu", SMALL)[1] == "cold deadline: queued behind other calls"
    finally:
        r.release("gpu")
        r.release("gpu")
    clock.advance(121)
    assert r.first_token_deadline("gpu", SMALL)[0] is None  # not answered recently
    off, _, _ = build([SMALL], [SMALL], warm_first_token_timeout=None)
    assert off.router.first_token_deadline("gpu", SMALL) == (None, "")


# ---------------------------------------------------------------- trials off the user's call
def test_a_trial_call_costs_the_user_nothing(build: Build, clock: FakeClock) -> None:
    model, gpu, _ = build(
        [SMALL], [SMALL], gpu={"loaded": [SMALL]}, timeouts=LONG, warm_first_token_timeout=WARM
    )
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK)
    assert model.invoke("a").response_metadata["backend"] == "cpu"  # pays the warm deadline
    assert model.stats()["gpu"]["circuit"] == "open"
    clock.advance(16)  # cooldown over: the next call would have been the trial
    msg = model.invoke("b")
    meta = msg.response_metadata["contextharbor"]
    assert msg.response_metadata["backend"] == "cpu" and meta["attempts"] == []
    assert any(s["reason"].startswith("on trial: a background") for s in meta["skipped"])
    assert model.router.trial_futures["gpu"].result(timeout=30) is False  # still hung
    assert model.stats()["gpu"]["circuit"] == "open"  # re-opened, with backoff
    assert model.stats()["gpu"]["retry_in_s"] == pytest.approx(30)
    gpu.clear_faults()
    clock.advance(31)
    assert model.invoke("c").response_metadata["backend"] == "cpu"  # trial in background
    assert model.router.trial_futures["gpu"].result(timeout=30) is True
    assert model.stats()["gpu"]["circuit"] == "closed"
    assert model.invoke("d").response_metadata["backend"] == "gpu"


def test_the_only_backend_left_still_takes_its_trial_call(build: Build, clock: FakeClock) -> None:
    model, gpu, cpu = build([SMALL], [SMALL])
    model.select_backend()
    gpu.inject(Fault.REFUSE)
    cpu.inject(Fault.REFUSE)
    with pytest.raises(Exception, match="connect"):
        model.invoke("a")
    gpu.clear_faults()
    clock.advance(16)  # both cooldowns over; gpu is back, cpu is not
    assert model.invoke("b").response_metadata["backend"] == "gpu"
    cpu.clear_faults()


def test_a_call_whose_other_candidates_fail_joins_the_server_on_trial(
    build: Build, clock: FakeClock
) -> None:
    model, gpu, cpu = build([SMALL], [SMALL])
    model.select_backend()
    gpu.inject(Fault.REFUSE)
    assert model.invoke("a").response_metadata["backend"] == "cpu"
    gpu.clear_faults()
    cpu.inject(Fault.REFUSE)
    clock.advance(16)  # the gpu's trial is due and runs in the background; the cpu is down
    msg = model.invoke("b")
    assert msg.response_metadata["backend"] == "gpu"
    (attempt,) = msg.response_metadata["contextharbor"]["attempts"]
    assert attempt["backend"] == "cpu"
    cpu.clear_faults()

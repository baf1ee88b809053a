"""The router's fleet-mode hooks, driven by a recording in-process SharedState.

These pin the contract between :class:`Router` and any shared store (what is called when,
and how the fleet's answers feed the plan); the Redis implementation is tested against a
real redis-server in the other files of this directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_contextharbor import BackendConfig, BreakerPolicy
from langchain_contextharbor._facts import ProbeResult
from langchain_contextharbor._router import Router
from langchain_contextharbor._settings import RouterSettings
from langchain_contextharbor.classify import Classification, FailoverCategory
from langchain_contextharbor.fleet import (
    LocalState,
    MarkKind,
    ProbeDecision,
    SharedBackend,
    SharedBreaker,
    SharedState,
    make_shared_state,
)
from langchain_contextharbor.routing import RoutePolicy, SpeedEstimate, SpeedPrior
from langchain_contextharbor.testing.clock import FakeClock

# Equal speeds: spill-over happens only when the other backend is expected to finish sooner
# (the default prior takes a GPU to be ten times faster than a CPU).
POLICY = RoutePolicy(size_threshold_bytes=8 * 1024**3, prior=SpeedPrior(cpu_tokens_per_s=60.0))
SIZES = {"llama3.2:1b": 1.3}
DEAD = Classification(FailoverCategory.CONNECT, True, True)


class Recording:
    """A shared state kept in a dict, with every hook call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.backends: dict[str, SharedBackend] = {}
        self.refuse_trial = False
        self.up = True

    def view(self, now: float) -> Mapping[str, SharedBackend] | None:
        self.calls.append(("view", now))
        return dict(self.backends) if self.up else None

    def acquire(
        self,
        backend: str,
        now: float,
        *,
        trial: bool,
        spill_to: Sequence[str] = (),
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> bool | None:
        self.calls.append(("acquire", (backend, trial)))
        return False if (trial and self.refuse_trial) else True

    def release(self, backend: str, now: float) -> None:
        self.calls.append(("release", backend))

    def publish_breaker(self, backend: str, breaker: SharedBreaker, now: float) -> None:
        self.calls.append(("breaker", (backend, breaker.state, breaker.opened_at)))

    def publish_mark(
        self,
        backend: str,
        kind: MarkKind,
        model: str,
        until: float,
        now: float,
        num_ctx: int = 0,
        message: str = "",
    ) -> None:
        self.calls.append(("mark", (backend, kind, model, until)))

    def probe_decision(self, backend: str, now: float, ttl: float) -> ProbeDecision:
        return ("adopt", ProbeResult(True, now, 1.0, models={"llama3.2:1b": 1}, loaded={}))

    def publish_probe(self, backend: str, result: ProbeResult, now: float, ttl: float) -> None:
        self.calls.append(("probe", backend))

    def sync_speeds(
        self, mine: Mapping[tuple[str, str], SpeedEstimate], now: float
    ) -> Mapping[tuple[str, str], SpeedEstimate] | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"mode": "recording"}

    def close(self) -> None:
        pass


def make_router(shared: SharedState | None, clock: FakeClock) -> Router:
    return Router(
        [
            BackendConfig(name="gpu", base_url="http://127.0.0.1:9", kind="gpu", max_parallel=1),
            BackendConfig(name="cpu", base_url="http://127.0.0.1:10", kind="cpu", max_parallel=1),
        ],
        RouterSettings(breaker_policy=BreakerPolicy(cooldown=10.0), background_probes=False),
        clock=clock,
        shared_state=shared,
    )


def plan(r: Router) -> list[str]:
    r.prepare("llama3.2:1b")  # reads the fleet's view
    return r.plan("llama3.2:1b", num_ctx=2048, sizes=SIZES, policy=POLICY).backends


def test_local_state_satisfies_the_protocol_and_none_means_local() -> None:
    assert isinstance(LocalState(), SharedState)
    assert isinstance(Recording(), SharedState)
    assert make_shared_state(None, ["gpu"], env={}) is None
    assert make_shared_state("local", ["gpu"], env={}) is None


def test_the_factory_lives_apart_from_the_protocol_and_stays_importable_from_it() -> None:
    """``fleet`` is the protocol: it imports no implementation; the factory that builds the
    Redis store lives in ``_fleet_setup`` and ``fleet.make_shared_state`` still finds it."""
    import langchain_contextharbor.fleet as fleet
    from langchain_contextharbor import _fleet_setup, breaker

    assert make_shared_state is _fleet_setup.make_shared_state is fleet.make_shared_state
    assert "make_shared_state" not in vars(fleet)  # resolved on access, not imported
    # the pure breaker reads the fleet's record through its own protocol, not the fleet type
    assert not any(v is fleet for v in vars(breaker).values())
    br = breaker.CircuitBreaker()
    assert br.adopt_shared(SharedBreaker("open", 1, 5.0, 10.0), now=6.0)
    assert br.state == "open" and br.retry_at() == 15.0


def test_fleet_in_flight_feeds_the_plan_and_spills_over() -> None:
    clock = FakeClock()
    shared = Recording()
    r = make_router(shared, clock)
    assert plan(r) == ["gpu", "cpu"]
    # Another worker holds the GPU's only slot: this worker spills over to the CPU.
    shared.backends = {"gpu": SharedBackend(in_flight=1), "cpu": SharedBackend(in_flight=0)}
    assert plan(r) == ["cpu", "gpu"]
    assert r.stats()["gpu"]["fleet_in_flight"] == 1
    # The store goes away: back to local knowledge (nothing in flight here).
    shared.up = False
    assert plan(r) == ["gpu", "cpu"]


def test_a_circuit_opened_elsewhere_opens_here_and_closes_with_the_fleet() -> None:
    clock = FakeClock()
    shared = Recording()
    r = make_router(shared, clock)
    shared.backends = {
        "gpu": SharedBackend(0, SharedBreaker("open", 1, clock.now, 10.0)),
        "cpu": SharedBackend(0),
    }
    r.prepare("llama3.2:1b")
    p = r.plan("llama3.2:1b", num_ctx=2048, sizes=SIZES, policy=POLICY)
    assert p.backends == ["cpu"] and "circuit open" in p.skipped[0].reason
    # Cooldown over but another worker holds the trial: still skipped here.
    clock.advance(11)
    shared.backends["gpu"] = SharedBackend(
        0, SharedBreaker("open", 1, clock.now - 11, 10.0, trial_busy=True)
    )
    assert plan(r) == ["cpu"]
    # The trial succeeded elsewhere: the fleet's circuit is closed, so is ours.
    shared.backends["gpu"] = SharedBackend(0)
    assert plan(r) == ["gpu", "cpu"]
    assert r.get("gpu").breaker.state == "closed"


def test_trial_call_refused_by_the_fleet_is_skipped_and_undone() -> None:
    clock = FakeClock()
    shared = Recording()
    r = make_router(shared, clock)
    assert r.acquire("gpu")
    r.record_failure("gpu", "llama3.2:1b", 2048, DEAD, "refused", fell_back=True)
    r.release("gpu")
    assert ("breaker", ("gpu", "open", clock.now)) in shared.calls
    clock.advance(11)
    shared.refuse_trial = True
    assert r.acquire("gpu") is False
    assert ("acquire", ("gpu", True)) in shared.calls
    assert r.get("gpu").in_flight == 0
    shared.refuse_trial = False
    assert r.acquire("gpu") is True  # the trial is ours now
    r.record_success("gpu", 0.1, None)
    r.release("gpu")
    assert ("breaker", ("gpu", "closed", None)) in shared.calls
    assert [c for c in shared.calls if c[0] == "release"] == [("release", "gpu")] * 2


def test_marks_are_published_and_adopted() -> None:
    clock = FakeClock()
    shared = Recording()
    r = make_router(shared, clock)
    nf = Classification(FailoverCategory.MODEL_NOT_FOUND, True, False)
    r.record_failure("cpu", "llama3.2:1b", 2048, nf, "404", fell_back=True)
    assert any(
        c[0] == "mark" and c[1][:3] == ("cpu", "missing", "llama3.2:1b") for c in shared.calls
    )
    shared.backends = {
        "gpu": SharedBackend(0, oom={"llama3.2:1b": (2048, clock.now + 60, "oom")}),
        "cpu": SharedBackend(0),
    }
    r.prepare("llama3.2:1b")
    p = r.plan("llama3.2:1b", num_ctx=4096, sizes=SIZES, policy=POLICY)
    assert p.backends == ["gpu"]  # cpu: 404 here; gpu: demoted by the fleet's OOM mark
    assert "out-of-memory" in " ".join(p.candidates[0].reasons)


def test_probe_adopted_from_the_fleet_makes_no_request() -> None:
    clock = FakeClock()
    shared = Recording()
    r = make_router(shared, clock)
    out = r.refresh()  # the backends' ports are closed: only an adopted result is ok
    assert all(res.ok for res in out.values())
    assert not [c for c in shared.calls if c[0] == "probe"]
    r.close()


def test_an_unpublished_local_opening_is_not_closed_by_an_empty_fleet_record() -> None:
    clock = FakeClock()
    shared = Recording()
    r = make_router(shared, clock)
    shared.backends = {"gpu": SharedBackend(0), "cpu": SharedBackend(0)}
    assert plan(r) == ["gpu", "cpu"]
    r.acquire("gpu")
    r.record_failure("gpu", "llama3.2:1b", 2048, DEAD, "refused", fell_back=True)
    r.release("gpu")
    # The store has not shown our opening yet (no record): the circuit stays open here.
    assert plan(r) == ["cpu"]
    assert r.get("gpu").breaker.state == "open"

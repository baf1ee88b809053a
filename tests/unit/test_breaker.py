"""The circuit breaker as a pure state machine: every step takes ``now``; nothing sleeps."""

from __future__ import annotations

import math

import pytest

from langchain_contextharbor import BreakerPolicy, CircuitBreaker, ConfigurationError

# A scripted step: (operation, now, expected state afterwards, expected return or None).
# Operations: "allow" (would_allow, no state change), "acquire", "ok" (record_success),
# "fail" (record_failure), "release" (no verdict), "probe_ok" (probe_succeeded, returns
# whether the state changed), "probe_down" (probe_failed), "reset".
Step = tuple[str, float, str, bool | None]


def _run(breaker: CircuitBreaker, steps: list[Step]) -> None:
    for i, (op, now, state, ret) in enumerate(steps):
        if op == "allow":
            got: bool | None = breaker.would_allow(now)
        elif op == "acquire":
            got = breaker.acquire(now)
        elif op == "ok":
            breaker.record_success()
            got = None
        elif op == "fail":
            breaker.record_failure(now)
            got = None
        elif op == "release":
            breaker.release()
            got = None
        elif op == "probe_ok":
            got = breaker.probe_succeeded()
        elif op == "probe_down":
            breaker.probe_failed()
            got = None
        elif op == "reset":
            breaker.reset()
            got = None
        else:  # pragma: no cover - table typo
            raise AssertionError(op)
        assert got == ret, f"step {i} {op}@{now}: returned {got!r}, expected {ret!r}"
        assert breaker.state == state, f"step {i} {op}@{now}: state {breaker.state!r}"


SCRIPTS: dict[str, tuple[BreakerPolicy, list[Step]]] = {
    "threshold 1: one failure opens": (
        BreakerPolicy(failure_threshold=1, cooldown=10),
        [
            ("acquire", 0, "closed", True),
            ("fail", 0, "open", None),
            ("allow", 5, "open", False),
            ("acquire", 5, "open", False),
            ("allow", 9.999, "open", False),
            ("allow", 10, "open", True),  # would_allow never changes state
            ("allow", 10, "open", True),
            ("acquire", 10, "half_open", True),  # the trial call
            ("allow", 10, "half_open", False),
            ("acquire", 11, "half_open", False),  # only one trial at a time
            ("ok", 12, "closed", None),
            ("acquire", 12, "closed", True),
            ("acquire", 12, "closed", True),
        ],
    ),
    "threshold 3: consecutive failures only": (
        BreakerPolicy(failure_threshold=3, cooldown=5),
        [
            ("fail", 0, "closed", None),
            ("fail", 1, "closed", None),
            ("ok", 2, "closed", None),  # resets the count
            ("fail", 3, "closed", None),
            ("fail", 4, "closed", None),
            ("allow", 4, "closed", True),
            ("fail", 5, "open", None),
            ("allow", 9, "open", False),
            ("allow", 10, "open", True),
        ],
    ),
    "failed trial reopens with backoff, capped": (
        BreakerPolicy(cooldown=10, backoff=3, max_cooldown=50),
        [
            ("fail", 0, "open", None),
            ("acquire", 10, "half_open", True),
            ("fail", 10, "open", None),  # cooldown 30
            ("allow", 39, "open", False),
            ("allow", 40, "open", True),
            ("acquire", 40, "half_open", True),
            ("fail", 41, "open", None),  # cooldown min(90, 50) = 50
            ("allow", 90, "open", False),
            ("allow", 91, "open", True),
            ("acquire", 91, "half_open", True),
            ("fail", 91, "open", None),  # still 50
            ("allow", 140, "open", False),
            ("allow", 141, "open", True),
            ("acquire", 141, "half_open", True),
            ("ok", 142, "closed", None),  # success resets the cooldown
            ("fail", 200, "open", None),
            ("allow", 209, "open", False),
            ("allow", 210, "open", True),
        ],
    ),
    "release without verdict keeps half-open; next call is the trial": (
        BreakerPolicy(cooldown=1),
        [
            ("fail", 0, "open", None),
            ("acquire", 1, "half_open", True),
            ("acquire", 1, "half_open", False),
            ("release", 2, "half_open", None),
            ("allow", 2, "half_open", True),
            ("acquire", 2, "half_open", True),
            ("acquire", 2, "half_open", False),
            ("fail", 3, "open", None),
        ],
    ),
    "release in closed state is a no-op": (
        BreakerPolicy(failure_threshold=2),
        [
            ("fail", 0, "closed", None),
            ("release", 0, "closed", None),
            ("fail", 0, "open", None),  # the earlier failure still counts
        ],
    ),
    "a late success while open closes the circuit": (
        BreakerPolicy(cooldown=100),
        [
            ("acquire", 0, "closed", True),
            ("acquire", 0, "closed", True),
            ("fail", 1, "open", None),
            ("ok", 2, "closed", None),  # the other in-flight call proved the server alive
            ("allow", 2, "closed", True),
        ],
    ),
    "a late failure while open does not move the retry time": (
        BreakerPolicy(cooldown=10),
        [
            ("fail", 0, "open", None),
            ("fail", 5, "open", None),
            ("allow", 10, "open", True),
        ],
    ),
    "a successful probe ends the cooldown: the next call is the trial": (
        BreakerPolicy(cooldown=15),
        [
            ("fail", 0, "open", None),
            ("allow", 1, "open", False),
            ("probe_ok", 1, "half_open", True),
            ("allow", 1, "half_open", True),
            ("acquire", 1, "half_open", True),
            ("ok", 2, "closed", None),
        ],
    ),
    "probes answering while calls fail: one early trial per outage": (
        BreakerPolicy(cooldown=15, backoff=2),
        [
            ("fail", 0, "open", None),
            ("probe_ok", 1, "half_open", True),
            ("acquire", 1, "half_open", True),
            ("fail", 2, "open", None),  # the trial failed: cooldown 30 from t=2
            ("probe_ok", 3, "open", False),  # same evidence again: no second shortcut
            ("allow", 31.9, "open", False),
            ("allow", 32, "open", True),
        ],
    ),
    "down then up again earns a new early trial": (
        BreakerPolicy(cooldown=15),
        [
            ("fail", 0, "open", None),
            ("probe_ok", 1, "half_open", True),
            ("acquire", 1, "half_open", True),
            ("fail", 2, "open", None),
            ("probe_down", 3, "open", None),
            ("probe_ok", 4, "half_open", True),
        ],
    ),
    "probes of a closed circuit change nothing": (
        BreakerPolicy(),
        [
            ("probe_down", 0, "closed", None),
            ("probe_ok", 0, "closed", False),
            ("acquire", 0, "closed", True),
        ],
    ),
    "a new outage after recovery earns the shortcut again": (
        BreakerPolicy(cooldown=15),
        [
            ("fail", 0, "open", None),
            ("probe_ok", 1, "half_open", True),
            ("acquire", 1, "half_open", True),
            ("ok", 2, "closed", None),
            ("fail", 3, "open", None),
            ("probe_ok", 4, "half_open", True),
        ],
    ),
    "reset forgets failures and backoff": (
        BreakerPolicy(cooldown=10, backoff=3),
        [
            ("fail", 0, "open", None),
            ("acquire", 10, "half_open", True),
            ("fail", 10, "open", None),  # cooldown now 30
            ("reset", 11, "closed", None),
            ("acquire", 11, "closed", True),
            ("fail", 12, "open", None),
            ("allow", 21.9, "open", False),
            ("allow", 22, "open", True),  # back to the base cooldown
        ],
    ),
    "zero cooldown: trial allowed at once": (
        BreakerPolicy(cooldown=0),
        [
            ("fail", 7, "open", None),
            ("allow", 7, "open", True),
            ("acquire", 7, "half_open", True),
            ("ok", 7, "closed", None),
        ],
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_breaker_script(name: str) -> None:
    policy, steps = SCRIPTS[name]
    _run(CircuitBreaker(policy), steps)


def test_defaults() -> None:
    b = CircuitBreaker()
    assert b.policy == BreakerPolicy()
    assert (b.state, b.failures, b.opened_at, b.cooldown) == ("closed", 0, None, 15.0)
    assert BreakerPolicy() == BreakerPolicy(
        failure_threshold=1, cooldown=15.0, backoff=2.0, max_cooldown=300.0
    )


def test_retry_at_and_counters() -> None:
    b = CircuitBreaker(BreakerPolicy(failure_threshold=2, cooldown=4, backoff=2, max_cooldown=6))
    assert b.retry_at() is None
    b.record_failure(100.0)
    assert (b.failures, b.retry_at()) == (1, None)
    b.record_failure(101.0)
    assert (b.state, b.opened_at, b.retry_at(), b.cooldown) == ("open", 101.0, 105.0, 4)
    assert b.acquire(105.0)
    assert b.retry_at() is None  # half-open: no retry time
    b.record_failure(106.0)
    assert (b.opened_at, b.cooldown, b.retry_at()) == (106.0, 6, 112.0)  # 8 capped at 6
    b.record_success()
    assert (b.state, b.failures, b.opened_at, b.cooldown, b.retry_at()) == (
        "closed",
        0,
        None,
        4,
        None,
    )


def test_would_allow_never_changes_state() -> None:
    b = CircuitBreaker(BreakerPolicy(cooldown=1))
    b.record_failure(0)
    before = (b.state, b.failures, b.opened_at, b.cooldown)
    for now in (0, 0.5, 1, 2, 1000):
        b.would_allow(now)
    assert (b.state, b.failures, b.opened_at, b.cooldown) == before


def test_breakers_are_independent() -> None:
    policy = BreakerPolicy()
    a, b = CircuitBreaker(policy), CircuitBreaker(policy)
    a.record_failure(0)
    assert (a.state, b.state) == ("open", "closed")


def test_not_a_sleeping_clock() -> None:
    """Huge and fractional ``now`` values work: the breaker never reads a clock itself."""
    b = CircuitBreaker(BreakerPolicy(cooldown=0.25))
    b.record_failure(1e9)
    assert not b.would_allow(1e9 + 0.2)
    assert b.would_allow(1e9 + 0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": -3}, "failure_threshold"),
        ({"cooldown": -1}, "cooldown"),
        ({"cooldown": math.nan}, "cooldown"),
        ({"cooldown": math.inf}, "cooldown"),
        ({"backoff": -2}, "backoff"),
        ({"backoff": math.nan}, "backoff"),
        ({"max_cooldown": -1}, "max_cooldown"),
        ({"max_cooldown": math.inf}, "max_cooldown"),
        ({"cooldown": "15"}, "cooldown"),
    ],
)
def test_policy_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cooldown": -1},
        {"failure_threshold": 0},
        {"failure_threshold": "2"},
        {"backoff": 0.5},
        {"cooldown": 400.0, "max_cooldown": 300.0},
        {"overload_window": -1},
        {"overload_window": math.nan},
    ],
)
def test_policy_errors_are_configuration_errors(kwargs: dict[str, object]) -> None:
    """The package's one error for a setting that cannot work (still a ValueError)."""
    with pytest.raises(ConfigurationError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"cooldown": 400.0, "max_cooldown": 300.0}, id="cooldown>max_cooldown"),
        pytest.param({"backoff": 0.5}, id="backoff<1"),
        pytest.param({"backoff": 0.0}, id="backoff=0"),
    ],
)
def test_policy_rejects_inconsistent_backoff(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    p = BreakerPolicy()
    with pytest.raises(AttributeError):
        p.cooldown = 1  # type: ignore[misc]


# The overload rule: (now, slow_accept, answered_at, probe_down, state after, failures after).
Slow = tuple[float, bool, "float | None", bool, str, int]
OVERLOAD: dict[str, tuple[BreakerPolicy, list[Slow]]] = {
    "a rush on a server that answers: nothing opens": (
        BreakerPolicy(cooldown=10, overload_window=10),
        [(100.0 + i / 10, True, 99.0, False, "closed", 0) for i in range(40)],
    ),
    "refused on a server that answered a moment ago: opens at once": (
        BreakerPolicy(cooldown=10, overload_window=10),
        [(100.0, False, 99.9, False, "open", 1)],
    ),
    "connect timeout, the last probe saw it down: opens at once": (
        BreakerPolicy(cooldown=10, overload_window=10),
        [(100.0, True, 99.0, True, "open", 1)],
    ),
    "connect timeout on a server never seen answering: opens at once": (
        BreakerPolicy(cooldown=10, overload_window=10),
        [(100.0, True, None, False, "open", 1)],
    ),
    "connect timeout, silent for longer than the window: opens": (
        BreakerPolicy(cooldown=10, overload_window=10),
        [(100.0, True, 89.9, False, "open", 1)],
    ),
    "connect timeouts going on for the whole window, no success: open": (
        BreakerPolicy(cooldown=10, overload_window=5),
        [
            (100.0, True, 99.0, False, "closed", 0),
            (103.0, True, 102.0, False, "closed", 0),  # probes still answer
            (104.9, True, 104.0, False, "closed", 0),
            (105.0, True, 104.5, False, "open", 1),  # the run began 5 s ago
        ],
    ),
    "the window set to 0: every connect timeout counts (the old behaviour)": (
        BreakerPolicy(cooldown=10, overload_window=0),
        [(100.0, True, 100.0, False, "open", 1)],
    ),
    "threshold 2: forgiven timeouts neither add to nor reset the count": (
        BreakerPolicy(failure_threshold=2, cooldown=10, overload_window=10),
        [
            (100.0, False, 99.0, False, "closed", 1),
            (100.5, True, 99.0, False, "closed", 1),
            (101.0, False, 99.0, False, "open", 2),
        ],
    ),
}


@pytest.mark.parametrize("name", list(OVERLOAD))
def test_overload_rule(name: str) -> None:
    policy, steps = OVERLOAD[name]
    b = CircuitBreaker(policy)
    for i, (now, slow, answered, down, state, failures) in enumerate(steps):
        b.record_failure(now, slow_accept=slow, answered_at=answered, probe_down=down)
        assert (b.state, b.failures) == (state, failures), f"step {i} @{now}"


def test_a_success_ends_the_run_of_forgiven_connect_timeouts() -> None:
    b = CircuitBreaker(BreakerPolicy(overload_window=5))
    b.record_failure(100.0, slow_accept=True, answered_at=99.0)
    assert not b.is_clean and b.slow_accepts == 1  # a success must reach the breaker
    b.record_success()
    assert b.is_clean and b.slow_accepts == 0
    # A new run starts at 104.5: at 105 it is 0.5 s old, not 5 s.
    b.record_failure(104.5, slow_accept=True, answered_at=104.0)
    b.record_failure(105.0, slow_accept=True, answered_at=104.0)
    assert b.state == "closed"
    b.record_failure(109.5, slow_accept=True, answered_at=109.0)
    assert b.state == "open"


def test_a_trial_call_is_judged_on_its_outcome_even_a_connect_timeout() -> None:
    b = CircuitBreaker(BreakerPolicy(cooldown=10, overload_window=10))
    b.record_failure(0.0)
    assert b.acquire(10.0) and b.state == "half_open"
    b.record_failure(10.5, slow_accept=True, answered_at=10.0)
    assert (b.state, b.cooldown) == ("open", 20.0)


def test_admits_on_evidence_needs_a_probe_newer_than_the_last_failure() -> None:
    b = CircuitBreaker(BreakerPolicy(cooldown=100))
    assert not b.admits_on_evidence(5.0)  # closed: nothing to admit past
    b.record_failure(10.0)
    assert not b.admits_on_evidence(None)
    assert not b.admits_on_evidence(9.0)  # the probe is older than the failure
    assert b.admits_on_evidence(11.0)
    assert b.state == "open"  # asking changes nothing
    b.record_failure(12.0)  # the call so admitted failed: that probe is used up
    assert not b.admits_on_evidence(11.0)
    assert b.admits_on_evidence(13.0)
    b.record_success()
    assert not b.admits_on_evidence(13.0)

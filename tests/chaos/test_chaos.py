"""The chaos suite, short version: a seeded mix of calls while faults, kills, a blackhole,
a server that is not Ollama, a full outage and a request with an invalid option hit both
servers; every call and the run's stats must stay within the invariants of
``chaos_harness.Checker``. The long run is ``benchmarks/chaos.py``.

The harness is tested too: three bugs patched in on purpose must each be reported.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chaos_harness import (
    INJECTED_BUGS,
    OPS,
    ChaosRun,
    as_json,
    first,
    make_schedule,
    self_check_schedule,
)

SEED = 20261130


@pytest.fixture(scope="module")
def chaos() -> Iterator[ChaosRun]:
    with ChaosRun() as run:
        yield run


def test_schedule_is_a_pure_function_of_the_seed() -> None:
    a, b = make_schedule(SEED, 30, 10), make_schedule(SEED, 30, 10)
    assert [(p.describe(), p.ops) for p in a] == [(p.describe(), p.ops) for p in b]
    other = make_schedule(SEED + 1, 30, 10)
    assert [p.ops for p in a] != [p.ops for p in other]
    actions = {p.action for p in a[:20]}
    assert actions == {
        "healthy",
        "fault",
        "kill",
        "blackhole",
        "foreign",
        "both_down",
        "bad_request",
    }
    faults = {(p.fault, tuple(p.fault_kw.items())) for p in a if p.action == "fault"}
    assert len(faults) >= 13  # every fault of the table, mid-stream variants included


@pytest.mark.timeout(240)
def test_short_chaos_run_keeps_every_invariant(chaos: ChaosRun) -> None:
    report = chaos.run(SEED, phases=20, calls_per_phase=12)
    assert not report.violations, first(report.violations, 20) + "\n" + as_json(report)
    assert report.calls >= 300
    assert set(report.ops) == set(OPS)
    assert set(report.actions) == {
        "healthy",
        "fault",
        "kill",
        "blackhole",
        "foreign",
        "both_down",
        "bad_request",
    }
    assert report.bad_requests >= 2  # refused as the request's, routing unchanged after
    # The run exercised both outcomes and both servers, and failed over invisibly.
    assert report.ok > report.calls // 2
    assert report.errors
    assert report.fallbacks > 0
    assert set(report.served) == {"gpu", "cpu"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bug", sorted(INJECTED_BUGS))
def test_checker_catches_an_injected_bug(chaos: ChaosRun, bug: str) -> None:
    patch, symptoms = INJECTED_BUGS[bug]
    with patch():
        report = chaos.run(SEED, 0, 0, schedule=self_check_schedule(bug))
    assert any(s in v for v in report.violations for s in symptoms), (
        f"{bug!r} went unnoticed:\n{first(report.violations)}\n{as_json(report)}"
    )

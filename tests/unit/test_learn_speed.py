"""Learning speeds from Ollama's final-chunk timings (pure)."""

from __future__ import annotations

import pytest

from langchain_contextharbor._facts import learn_speed

MS = 1_000_000  # Ollama's durations are integer nanoseconds


def info(ec: int = 100, ed_ms: float = 1000, ped_ms: float = 50, ld_ms: float = 1) -> dict:
    return {
        "eval_count": ec,
        "eval_duration": int(ed_ms * MS),
        "prompt_eval_duration": int(ped_ms * MS),
        "load_duration": int(ld_ms * MS),
    }


def test_first_sample_and_decay() -> None:
    s = learn_speed(None, info())
    assert s is not None and s.samples == 1
    assert s.tokens_per_s == 100 and s.first_token_s == 0.05 and s.output_tokens == 100
    assert s.load_s is None  # 1 ms is no cold load
    s2 = learn_speed(s, info(ec=200, ed_ms=1000))
    assert s2 is not None and s2.samples == 2
    assert s2.tokens_per_s == 100 + 0.3 * (200 - 100)
    assert s2.output_tokens == 100 + 0.3 * (200 - 100)


def test_first_token_falls_fast_and_rises_slowly() -> None:
    s = learn_speed(None, info(ped_ms=100))
    faster = learn_speed(s, info(ped_ms=20))
    assert faster is not None and faster.first_token_s == 0.02
    slower = learn_speed(faster, info(ped_ms=1020))
    assert slower is not None and abs(slower.first_token_s - 0.12) < 1e-9


def test_a_queued_call_teaches_only_speed_and_length() -> None:
    s = learn_speed(None, info(ped_ms=10))
    waited = learn_speed(s, info(ec=100, ed_ms=500, ped_ms=900, ld_ms=2000), queued=True)
    assert waited is not None
    assert waited.first_token_s == 0.01 and waited.load_s is None
    assert waited.tokens_per_s == 100 + 0.3 * (200 - 100)


def test_cold_loads_are_learned_and_garbage_is_ignored() -> None:
    s = learn_speed(None, info(ld_ms=3000))
    assert s is not None and s.load_s == 3.0
    assert learn_speed(s, {"done": True}) is s
    assert learn_speed(None, {"eval_count": 0, "eval_duration": 5}) is None
    assert learn_speed(s, {"eval_count": "x", "eval_duration": 5}) is s


@pytest.mark.parametrize(
    "sample",
    [
        {"eval_count": 10**9, "eval_duration": 1},  # 1e18 tokens/s
        {"eval_count": 10, "eval_duration": 10**9, "load_duration": 10**17},  # a 1e8 s load
        {"eval_count": 10, "eval_duration": 10**9, "prompt_eval_duration": 10**16},
        {"eval_count": 1, "eval_duration": 10**16},  # 1e-7 tokens/s
        {"eval_count": 10, "eval_duration": float("inf")},
        {"eval_count": 10, "eval_duration": 10**9, "prompt_eval_duration": float("inf")},
        {"eval_count": True, "eval_duration": 10**9},
    ],
)
def test_an_implausible_sample_teaches_nothing(sample: dict[str, object]) -> None:
    """The one rule (``learn_speed``): outside its bounds, ``old`` comes back unchanged."""
    assert learn_speed(None, sample) is None
    old = learn_speed(None, {"eval_count": 10, "eval_duration": 10**9})
    assert old is not None and learn_speed(old, sample) is old

"""A hand-moved monotonic clock, so tests of breakers and caches never sleep."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Callable returning the current fake time; ``advance()`` moves it forward.

    Pass it as ``HybridChatOllama(clock=...)``: circuit-breaker cooldowns, probe TTLs and
    learned out-of-memory marks all read this clock.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self.now += seconds

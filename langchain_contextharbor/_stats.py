"""Per-backend counters and latency summaries, cheap enough for the hot path.

Why not a metrics library: the counters are a handful of integers and two bounded
windows of floats updated under the router's lock (well under a microsecond a call);
the optional Prometheus exporter reads them from :meth:`BackendStats.as_dict`.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BackendStats", "LatencySummary"]

_WINDOW = 1024


@dataclass
class LatencySummary:
    """Count, mean, min, max over all samples; p50/p95 over the last 1024."""

    count: int = 0
    total: float = 0.0
    min: float = float("inf")
    max: float = 0.0
    window: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds
        self.window.append(seconds)

    def _pct(self, q: float) -> float | None:
        if not self.window:
            return None
        data = sorted(self.window)
        return data[min(len(data) - 1, int(q * len(data)))]

    def as_dict(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 3)

        return {
            "count": self.count,
            "mean_ms": ms(self.total / self.count) if self.count else None,
            "min_ms": ms(self.min) if self.count else None,
            "max_ms": ms(self.max) if self.count else None,
            "p50_ms": ms(self._pct(0.5)),
            "p95_ms": ms(self._pct(0.95)),
        }


@dataclass
class BackendStats:
    requests: int = 0
    successes: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    """Calls that left this backend for the next candidate after it failed."""
    interrupted: int = 0
    """Streams that failed after content was delivered (no fallback possible)."""
    abandoned: int = 0
    """Calls the caller stopped reading or cancelled: ``requests == successes +
    sum(failures) + abandoned`` once nothing is in flight."""
    latency: LatencySummary = field(default_factory=LatencySummary)
    ttft: LatencySummary = field(default_factory=LatencySummary)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": dict(self.failures),
            "fallbacks": self.fallbacks,
            "interrupted": self.interrupted,
            "abandoned": self.abandoned,
            "latency": self.latency.as_dict(),
            "time_to_first_token": self.ttft.as_dict(),
        }

"""The router's settings as one frozen value, checked once.

Why a value: the chat model and the embeddings each used to hand the router thirteen
keyword arguments and check each number by hand beforehand (eight near-identical
``math.isfinite`` tests). A frozen dataclass is built once from the user's fields, checks
itself in ``__post_init__`` (every bad number names itself in one :class:`ConfigurationError`),
and is what :class:`~langchain_contextharbor._router.Router` reads. What is *injected*
rather than configured (the clock, NVML, the host-memory reader, the fleet's shared state)
stays a constructor argument of the router: those are collaborators, not settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from langchain_contextharbor.breaker import BreakerPolicy
from langchain_contextharbor.errors import ConfigurationError

__all__ = ["RouterSettings", "check_seconds"]


def check_seconds(name: str, value: object, *, positive: bool, optional: bool = False) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is a finite number of seconds
    (``> 0`` when ``positive``, else ``>= 0``; ``None`` allowed when ``optional``). The one
    place every duration setting of the package is checked."""
    if value is None and optional:
        return
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        tail = " or None" if optional else ""
        raise ConfigurationError(f"{name} must be {bound} seconds{tail}, got {value!r}")


@dataclass(frozen=True)
class RouterSettings:
    """How a router probes, plans and recovers. Every field is a plain number or flag."""

    breaker_policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    """When a backend's circuit opens and how long it stays open."""
    probe_ttl: float = 10.0
    """Seconds a health probe (``/api/version``, ``/api/tags``, ``/api/ps``) stays fresh."""
    show_ttl: float = 600.0
    """Seconds an ``/api/show`` reading (architecture, for KV-cache sizing) stays fresh."""
    oom_cooldown: float = 120.0
    """Seconds an out-of-memory answer keeps that (model, ``num_ctx``) off that backend."""
    missing_ttl: float = 60.0
    """Seconds a 404 "model not found" keeps that model off that backend."""
    background_probes: bool = True
    """Refresh stale probes on the thread pool (off: only explicit ``refresh()`` probes)."""
    first_probe_wait: float = 0.25
    """Seconds a fresh router's first plan may wait for the backends' first probes."""
    recheck_interval: float = 1.0
    """Seconds between re-probes of a backend when every backend is closed off."""
    warm_first_token: float | None = 10.0
    """First-token deadline for a model known loaded on a server that answered recently."""
    warm_first_token_factor: float = 5.0
    """The warm deadline is at least this many times the learned time to first token."""
    warm_window: float = 120.0
    """Seconds after a successful call during which its model counts as loaded there."""
    background_trials: bool = True
    """A due trial call of an open circuit is the router's own one-token chat, not a user's."""
    calibrate_speeds: bool = True
    """Measure a free backend's speed with one short chat when the prior alone keeps calls
    off it."""
    calibration_cooldown: float = 300.0
    """Seconds between two calibrations of one (backend, model)."""

    def __post_init__(self) -> None:
        if not isinstance(self.breaker_policy, BreakerPolicy):
            raise ConfigurationError(
                f"breaker must be a BreakerPolicy, got {type(self.breaker_policy).__name__}"
            )
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "breaker_policy":
                continue
            if f.type in ("bool", bool):
                if not isinstance(v, bool):
                    raise ConfigurationError(f"{f.name} must be True or False, got {v!r}")
                continue
            positive = f.name not in {"first_probe_wait", "oom_cooldown", "missing_ttl"}
            check_seconds(f.name, v, positive=positive, optional=f.name == "warm_first_token")

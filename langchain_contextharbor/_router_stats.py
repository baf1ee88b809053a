"""The router's stats: one plain dict per backend, built from the table under its lock.

Why a module of its own: it is read by ``Router.stats()``, the CLI, the status page and the
Prometheus exporter, never by a call, and it is the one place that turns a row
(counters, breaker, loads, learned speeds, calibrations) into what those readers show.
"""

from __future__ import annotations

from typing import Any

from langchain_contextharbor._table import BackendTable

__all__ = ["router_stats"]


def router_stats(t: BackendTable) -> dict[str, Any]:
    """Backend name -> its counters and state (``Router.stats()``), read at one instant."""
    now = t.clock()
    out: dict[str, Any] = {}
    with t._lock:
        for b in t._backends:
            d = b.stats.as_dict()
            d["circuit"] = b.breaker.state
            d["consecutive_failures"] = b.breaker.failures
            ra = b.breaker.retry_at()
            d["retry_in_s"] = round(ra - now, 3) if ra is not None else None
            d["in_flight"] = b.in_flight
            if t._shared is not None:
                d["fleet_in_flight"] = b.fleet.in_flight if b.fleet is not None else None
            d["url"] = b.config.safe_url
            d["speeds"] = {
                m: {
                    "tokens_per_s": round(sp.tokens_per_s, 2),
                    "first_token_s": round(sp.first_token_s, 4),
                    "answer_tokens": round(sp.output_tokens, 1),
                    "load_s": None if sp.load_s is None else round(sp.load_s, 3),
                    "samples": sp.samples,
                }
                for (n, m), sp in t.speeds.items()
                if n == b.config.name
            }
            d["calibrations"] = {
                "sent": b.calibrations,
                "failed": b.calibration_failures,
            }
            d["kind"] = b.config.kind
            out[b.config.name] = d
    return out

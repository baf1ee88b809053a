"""Prometheus exporter for the router's counters (optional extra ``prometheus``).

Why a custom collector instead of instrumenting the hot path: the chat model already keeps
per-backend counters and latency windows (``HybridChatOllama.stats()``), updated under its
own lock. Reading them at scrape time costs the calls nothing, needs no second set of
counters to keep in step, and works for any number of instances.

Install with ``pip install 'langchain-contextharbor[prometheus]'``. ``prometheus_client`` is
imported only when a collector or exporter is created, so importing this module never fails.

Metrics (labels ``router`` and ``backend`` on all; ``router`` names the HybridChatOllama):

=================================================  =======  ================================
``contextharbor_requests_total``                   counter  calls sent to the backend
``contextharbor_successes_total``                  counter  calls it answered
``contextharbor_failures_total{error_class}``      counter  failures by category (``timeout``,
                                                            ``connection``, ``out_of_memory``...)
``contextharbor_fallbacks_total``                  counter  calls that left it for the next one
``contextharbor_interrupted_streams_total``        counter  streams that broke after output
``contextharbor_circuit_state``                    gauge    0 closed, 1 half-open, 2 open
``contextharbor_circuit_consecutive_failures``     gauge    failures since the last success
``contextharbor_in_flight``                        gauge    calls running on it now
``contextharbor_request_latency_seconds``          summary  whole call; quantiles 0.5, 0.95
``contextharbor_time_to_first_token_seconds``      summary  time to the first token
``contextharbor_backend_info{kind,url}``           gauge    1; URL without credentials
=================================================  =======  ================================

Summary quantiles cover the last 1024 calls; ``_count`` counts all calls and ``_sum`` is
count x mean, both since the instance was created.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_contextharbor.chat_models import HybridChatOllama

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["CIRCUIT_STATES", "Exporter", "HybridCollector", "start_exporter"]

#: Value of ``contextharbor_circuit_state`` for each breaker state.
CIRCUIT_STATES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}

_INSTALL_HINT = (
    "the Prometheus exporter needs prometheus-client: "
    "pip install 'langchain-contextharbor[prometheus]'"
)

Models = HybridChatOllama | Sequence[HybridChatOllama] | Mapping[str, HybridChatOllama]


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return prometheus_client


def _labelled(models: Models) -> list[tuple[str, HybridChatOllama]]:
    """``(router label, instance)`` pairs; labels default to the model tag, made unique."""
    if isinstance(models, HybridChatOllama):
        items: Iterable[tuple[str, HybridChatOllama]] = [(models.model, models)]
    elif isinstance(models, Mapping):
        items = [(str(k), v) for k, v in models.items()]
    else:
        items = [(m.model, m) for m in models]
    out: list[tuple[str, HybridChatOllama]] = []
    seen: dict[str, int] = {}
    for label, llm in items:
        if not isinstance(llm, HybridChatOllama):
            raise TypeError(f"expected HybridChatOllama instances, got {type(llm).__name__}")
        n = seen.get(label, 0) + 1
        seen[label] = n
        out.append((label if n == 1 else f"{label}#{n}", llm))
    if not out:
        raise ValueError("no HybridChatOllama instance given")
    return out


def _seconds(ms: float | None) -> float:
    return 0.0 if ms is None else ms / 1000.0


class HybridCollector:
    """A Prometheus collector over the ``stats()`` of one or more HybridChatOllama.

    ``models``: one instance, a list, or ``{label: instance}``. Register it on a registry
    (``prometheus_client.REGISTRY.register(HybridCollector(llm))``) or let
    :func:`start_exporter` do it.
    """

    def __init__(self, models: Models, *, namespace: str = "contextharbor") -> None:
        _prometheus()
        self._models = _labelled(models)
        self._ns = namespace

    def collect(self) -> Iterator[Any]:
        core = _prometheus().core
        ns = self._ns
        base = ["router", "backend"]

        def counter(name: str, doc: str, labels: Sequence[str] = base) -> Any:
            return core.CounterMetricFamily(f"{ns}_{name}", doc, labels=list(labels))

        def gauge(name: str, doc: str, labels: Sequence[str] = base) -> Any:
            return core.GaugeMetricFamily(f"{ns}_{name}", doc, labels=list(labels))

        requests = counter("requests", "Calls sent to the backend.")
        successes = counter("successes", "Calls the backend answered.")
        failures = counter("failures", "Failed calls by error class.", [*base, "error_class"])
        fallbacks = counter("fallbacks", "Calls that left the backend for the next one.")
        interrupted = counter(
            "interrupted_streams", "Streams that failed after output reached the caller."
        )
        circuit = gauge("circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.")
        consecutive = gauge(
            "circuit_consecutive_failures", "Failures since the backend's last success."
        )
        in_flight = gauge("in_flight", "Calls running on the backend now.")
        info = gauge(
            "backend_info", "Backend kind and URL (credentials removed).", [*base, "kind", "url"]
        )
        summaries = {
            "latency": core.SummaryMetricFamily(
                f"{ns}_request_latency_seconds", "Duration of successful calls.", labels=base
            ),
            "time_to_first_token": core.SummaryMetricFamily(
                f"{ns}_time_to_first_token_seconds",
                "Time to the first token of successful calls (invoke reads the stream too).",
                labels=base,
            ),
        }
        for router, llm in self._models:
            for backend, s in llm.stats().items():
                labels = [router, backend]
                requests.add_metric(labels, s["requests"])
                successes.add_metric(labels, s["successes"])
                for error_class, n in sorted(s["failures"].items()):
                    failures.add_metric([*labels, error_class], n)
                fallbacks.add_metric(labels, s["fallbacks"])
                interrupted.add_metric(labels, s.get("interrupted", 0))
                circuit.add_metric(labels, CIRCUIT_STATES.get(s["circuit"], 2))
                consecutive.add_metric(labels, s.get("consecutive_failures", 0))
                in_flight.add_metric(labels, s["in_flight"])
                info.add_metric([*labels, s["kind"], s["url"]], 1)
                for key, family in summaries.items():
                    summary = s[key]
                    count = int(summary["count"])
                    family.add_metric(
                        labels, count_value=count, sum_value=_seconds(summary["mean_ms"]) * count
                    )
                    for q, field in (("0.5", "p50_ms"), ("0.95", "p95_ms")):
                        if summary[field] is not None:
                            family.add_sample(
                                family.name,
                                {"router": router, "backend": backend, "quantile": q},
                                _seconds(summary[field]),
                            )
        yield from (
            requests,
            successes,
            failures,
            fallbacks,
            interrupted,
            circuit,
            consecutive,
            in_flight,
            *summaries.values(),
            info,
        )


@dataclass
class Exporter:
    """A running ``/metrics`` HTTP server; ``close()`` (or ``with``) stops it."""

    server: WSGIServer
    thread: threading.Thread
    collector: HybridCollector
    registry: Any

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        addr = self.server.server_address[0]
        host = addr.decode() if isinstance(addr, bytes) else str(addr)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_exporter(
    model: Models,
    port: int = 0,
    *,
    addr: str = "127.0.0.1",
    registry: Any = None,
) -> Exporter:
    """Serve the metrics of ``model`` (one instance, a list, or ``{label: instance}``).

    ``port=0`` picks a free port (read it from ``.port``). ``addr`` defaults to loopback:
    the metrics name your servers, so exposing them is a deliberate choice
    (``addr="0.0.0.0"``). By default a private registry holds only these metrics, so
    several exporters never clash; pass ``registry=prometheus_client.REGISTRY`` to serve
    them together with the process metrics.
    """
    prom = _prometheus()
    collector = HybridCollector(model)
    if registry is None:
        registry = prom.CollectorRegistry()
    registry.register(collector)
    server, thread = prom.start_http_server(port, addr=addr, registry=registry)
    return Exporter(server, thread, collector, registry)

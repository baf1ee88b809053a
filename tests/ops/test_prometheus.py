"""Monitoring: the Prometheus exporter, scraped over HTTP, and the routing log records.

Calls go through HybridChatOllama to stand-ins over real HTTP; the exporter is scraped
with httpx like Prometheus would, and its text parsed with prometheus_client's parser.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from langchain_contextharbor import BackendConfig, HybridChatOllama, Timeouts
from langchain_contextharbor.prometheus import CIRCUIT_STATES, HybridCollector, start_exporter
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], gpu_fraction=1.0)
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], gpu_fraction=0.0)
    return gpu, cpu


@pytest.fixture
def llm(pair: tuple[OllamaStandIn, OllamaStandIn]) -> Iterator[HybridChatOllama]:
    gpu, cpu = pair
    # Roomy: nothing here provokes a timeout (a loaded CI machine must not either).
    t = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
    secret = gpu.url.replace("http://", "http://user:secret@")
    model = HybridChatOllama(
        model=MODEL,
        background_probes=False,
        backends=[
            BackendConfig(name="gpu", base_url=secret, kind="gpu", timeouts=t),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=t),
        ],
    )
    yield model
    model.close()


def scrape(url: str) -> tuple[str, Samples]:
    resp = httpx.get(url, timeout=5)
    assert resp.status_code == 200
    text = resp.text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_exporter_serves_counters_after_calls(
    llm: HybridChatOllama, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    gpu, _ = pair
    gpu.inject(Fault.HTTP_ERROR, count=1, status=500, message="boom")
    answers = [llm.invoke("hi") for _ in range(3)]
    # The first call failed over; the GPU's breaker then opened and later calls skip it.
    assert [a.response_metadata["backend"] for a in answers] == ["cpu", "cpu", "cpu"]
    chunks = list(llm.stream("stream me"))
    assert chunks[0].response_metadata["backend"] == "cpu"

    with start_exporter(llm, port=0) as exporter:
        assert exporter.port > 0 and exporter.url.startswith("http://127.0.0.1:")
        text, s = scrape(exporter.url)

    g = {"router": MODEL, "backend": "gpu"}
    c = {"router": MODEL, "backend": "cpu"}
    assert value(s, "contextharbor_requests_total", **g) == 1
    assert value(s, "contextharbor_successes_total", **g) == 0
    assert value(s, "contextharbor_failures_total", **g, error_class="server_error") == 1
    assert value(s, "contextharbor_fallbacks_total", **g) == 1
    assert value(s, "contextharbor_circuit_state", **g) == CIRCUIT_STATES["open"]
    assert value(s, "contextharbor_circuit_consecutive_failures", **g) == 1
    assert value(s, "contextharbor_requests_total", **c) == 4
    assert value(s, "contextharbor_successes_total", **c) == 4
    assert value(s, "contextharbor_fallbacks_total", **c) == 0
    assert value(s, "contextharbor_circuit_state", **c) == CIRCUIT_STATES["closed"]
    assert value(s, "contextharbor_in_flight", **c) == 0
    assert value(s, "contextharbor_interrupted_streams_total", **c) == 0
    assert value(s, "contextharbor_request_latency_seconds_count", **c) == 4
    latency_sum = value(s, "contextharbor_request_latency_seconds_sum", **c)
    p50 = value(s, "contextharbor_request_latency_seconds", **c, quantile="0.5")
    assert 0 < p50 < 5 and 0 < latency_sum < 20
    # Every successful call has a time to first token: invoke reads Ollama's stream too.
    assert value(s, "contextharbor_time_to_first_token_seconds_count", **c) == 4
    assert value(s, "contextharbor_time_to_first_token_seconds_count", **g) == 0
    assert (
        value(s, "contextharbor_backend_info", **g, kind="gpu", url=llm.backend_configs[0].safe_url)
        == 1
    )
    assert "# TYPE contextharbor_request_latency_seconds summary" in text
    assert "# TYPE contextharbor_requests_total counter" in text
    assert "secret" not in text


def test_several_instances_are_told_apart(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    backends = [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu"),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
    ]
    a = HybridChatOllama(model=MODEL, backends=backends, background_probes=False)
    b = HybridChatOllama(model=MODEL, backends=backends, background_probes=False)
    try:
        a.invoke("one")
        b.invoke("two")
        b.invoke("three")
        with start_exporter([a, b]) as exporter:
            _, s = scrape(exporter.url)
        assert value(s, "contextharbor_successes_total", router=MODEL, backend="gpu") == 1
        assert value(s, "contextharbor_successes_total", router=f"{MODEL}#2", backend="gpu") == 2
        # Named instances; a second exporter on its own registry does not clash.
        with start_exporter({"chat": a, "batch": b}) as exporter:
            _, s = scrape(exporter.url)
        assert value(s, "contextharbor_requests_total", router="batch", backend="gpu") == 2
    finally:
        a.close()
        b.close()


def test_collector_on_a_shared_registry(llm: HybridChatOllama) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(HybridCollector({"main": llm}))
    text = generate_latest(registry).decode()
    assert 'contextharbor_requests_total{backend="cpu",router="main"} 0.0' in text


def test_missing_prometheus_client_gives_a_clear_import_error(
    llm: HybridChatOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    # The module itself still imports (a fresh copy, leaving the real one alone) ...
    import langchain_contextharbor.prometheus as real

    spec = importlib.util.spec_from_file_location("_prometheus_copy", real.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    # ... and using it says what to install.
    with pytest.raises(ImportError, match=r"pip install 'langchain-contextharbor\[prometheus\]'"):
        module.start_exporter(llm)
    with pytest.raises(ImportError, match="prometheus-client"):
        module.HybridCollector(llm)


# ---------------------------------------------------------------------------- logging
def test_routing_decisions_are_logged_at_info(
    llm: HybridChatOllama,
    pair: tuple[OllamaStandIn, OllamaStandIn],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpu, _ = pair
    with caplog.at_level(logging.INFO, logger="langchain_contextharbor"):
        llm.invoke("hi")
        gpu.inject(Fault.HTTP_ERROR, count=1, status=500, message="boom")
        llm.invoke("again")
    records = [r for r in caplog.records if r.name == "langchain_contextharbor"]
    routes = [
        r
        for r in records
        if r.levelno == logging.INFO and r.getMessage().startswith(f"route {MODEL}:")
    ]
    assert len(routes) == 2
    assert "['gpu', 'cpu']" in routes[0].getMessage()
    failures = [r for r in records if r.levelno == logging.WARNING]
    assert len(failures) == 1 and "backend gpu failed" in failures[0].getMessage()
    assert all("secret" not in r.getMessage() for r in records)


def test_probe_details_are_logged_at_debug(
    llm: HybridChatOllama, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="langchain_contextharbor"):
        llm.refresh()
    debug = [
        r.getMessage()
        for r in caplog.records
        if r.name == "langchain_contextharbor" and r.levelno == logging.DEBUG
    ]
    assert any(m.startswith("probe gpu ok") for m in debug)
    assert any(m.startswith("probe cpu ok") for m in debug)


def test_route_reasons_are_logged_at_debug(
    llm: HybridChatOllama, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="langchain_contextharbor"):
        llm.invoke("hi")
    debug = "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name == "langchain_contextharbor" and r.levelno == logging.DEBUG
    )
    assert "gpu tier (preferred)" in debug

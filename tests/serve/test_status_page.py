"""The status page, its JSON and /metrics, over a real Router in front of two stand-ins.

The app here is a tiny starlette app of the test's own (``routes(state)`` and nothing
else): the proxy core mounts the same routes. Decisions come from real calls of a
HybridChatOllama that shares the router, as the proxy records them. The browser tests
drive Debian's chromium over the DevTools protocol: they skip with a reason when it is
missing locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import webkit
from starlette.applications import Starlette

from langchain_contextharbor import BackendConfig, HybridChatOllama
from langchain_contextharbor._router import Router
from langchain_contextharbor.serve.status import STATUS_PATH, routes
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.asgi import ServedApp
from langchain_contextharbor.testing.browser import Browser, require_chromium
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

MODEL = "llama3.2:1b"


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    return webkit.standins(ollama_standin_factory)


@pytest.fixture
def configs(pair: tuple[OllamaStandIn, OllamaStandIn]) -> list[BackendConfig]:
    return webkit.configs_for(*pair)


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], ServedApp]]:
    yield from webkit.app_server()



HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # as a browser asks


@dataclass
class State:
    router: Router
    configs: list[BackendConfig]
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))


def record(state: State, endpoint: str, answer: Any) -> dict[str, Any]:
    """Append the decision of one answered call, as the proxy does."""
    meta = answer.response_metadata["contextharbor"]
    d = {
        "time": time.time(),
        "endpoint": endpoint,
        "model": meta["model"],
        "backend": meta["backend"],
        "reasons": meta["reason"],
        "attempts": meta["attempts"],
    }
    state.decisions.append(d)
    return d


@pytest.fixture
def llm(configs: list[BackendConfig]) -> Iterator[HybridChatOllama]:
    m = HybridChatOllama(model=MODEL, backends=configs)
    yield m
    m.close()


@pytest.fixture
def state(llm: HybridChatOllama) -> State:
    return State(router=llm.router, configs=llm.backend_configs)


def app_for(state: State) -> Starlette:
    return Starlette(routes=routes(state))


def test_json_shows_backends_loaded_models_speeds_and_decisions(
    llm: HybridChatOllama, state: State, serve_app: Any
) -> None:
    served = serve_app(app_for(state))
    record(state, "/api/chat", llm.invoke("hello"))
    llm.refresh(MODEL)  # the probe now sees the model loaded on the GPU stand-in
    s = httpx.get(served.url + STATUS_PATH).json()
    by_name = {b["name"]: b for b in s["backends"]}
    assert list(by_name) == ["gpu", "cpu"]
    gpu = by_name["gpu"]
    assert gpu["health"]["state"] == "up" and gpu["circuit"] == "closed"
    assert (gpu["in_flight"], gpu["slots"], gpu["requests"], gpu["successes"]) == (0, 1, 1, 1)
    assert [m["name"] for m in gpu["loaded"]] == [MODEL]
    assert gpu["loaded"][0]["expires_at"]  # Ollama's keep-alive expiry, shown on the page
    assert MODEL in gpu["speeds"] and gpu["speeds"][MODEL]["tokens_per_s"] > 0
    (d,) = s["decisions"]
    assert (d["endpoint"], d["model"], d["backend"], d["fallback"]) == (
        "/api/chat",
        MODEL,
        "gpu",
        False,
    )
    assert d["reasons"] and all(isinstance(r, str) for r in d["reasons"])


def test_metrics_are_prometheus_text_from_the_router(
    llm: HybridChatOllama, state: State, serve_app: Any
) -> None:
    pytest.importorskip("prometheus_client")
    served = serve_app(app_for(state))
    llm.invoke("hello")
    r = httpx.get(served.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'contextharbor_requests_total{backend="gpu",router="serve"} 1.0' in text
    assert 'contextharbor_circuit_state{backend="cpu",router="serve"} 0.0' in text
    assert "contextharbor_backend_info{" in text


def test_no_backend_secret_on_the_page_or_in_the_json(
    pair: tuple[OllamaStandIn, OllamaStandIn], serve_app: Any
) -> None:
    gpu, cpu = pair
    password, token = "hunter2-pw", "tok-very-secret"
    configs = [
        BackendConfig(
            name="gpu", base_url=gpu.url.replace("http://", f"http://alice:{password}@")
        ),
        BackendConfig(
            name="cpu", base_url=cpu.url, kind="cpu", headers={"Authorization": f"Bearer {token}"}
        ),
    ]
    llm = HybridChatOllama(model=MODEL, backends=configs)
    try:
        state = State(router=llm.router, configs=llm.backend_configs)
        # A backend's error text that quotes its own URL and token, as a proxy might see.
        state.decisions.append(
            {
                "time": time.time(),
                "endpoint": "/v1/chat/completions",
                "model": MODEL,
                "backend": "cpu",
                "reasons": f"fell back from {configs[0].base_url}",
                "attempts": [
                    {
                        "backend": "gpu",
                        "category": "connection",
                        "error_class": "ConnectError",
                        "message": f"refused: {configs[0].base_url} Bearer {token}",
                        "elapsed_ms": 1.0,
                    }
                ],
            }
        )
        served = serve_app(app_for(state))
        llm.refresh()
        for path in ("/", STATUS_PATH, "/metrics"):
            body = httpx.get(served.url + path, headers=HTML).text
            assert password not in body and token not in body, path
        s = httpx.get(served.url + STATUS_PATH).json()
        assert s["backends"][0]["url"] == configs[0].safe_url
        assert "***" in s["decisions"][0]["attempts"][0]["message"]
    finally:
        llm.close()


def test_page_is_self_contained_and_locked_down(state: State, serve_app: Any) -> None:
    served = serve_app(app_for(state))
    r = httpx.get(served.url + "/", headers=HTML)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # No build step, nothing fetched but the JSON: no external script, style or image.
    assert "<script src" not in r.text and "<link" not in r.text
    assert STATUS_PATH in r.text and "innerHTML" not in r.text


def test_root_still_says_ollama_is_running_to_clients(state: State, serve_app: Any) -> None:
    """Ollama clients check ``GET /`` for Ollama's own text; only a browser gets the page."""
    served = serve_app(app_for(state))
    for method in ("GET", "HEAD"):
        r = httpx.request(method, served.url + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert httpx.get(served.url + "/").text == "Ollama is running"
    assert httpx.get(served.url + "/", headers={"Accept": "*/*"}).text == "Ollama is running"


# ---------------------------------------------------------------- in a real browser

FAILED_OVER = (
    "(() => { const r = document.querySelector('tr.decision[data-fallback=\"true\"]');"
    " return r && r.dataset.backend == 'cpu' && r.innerText; })()"
)


def test_browser_renders_backends_and_shows_a_failover_within_seconds(
    llm: HybridChatOllama, state: State, serve_app: Any, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    chromium = require_chromium()
    gpu, _ = pair
    served = serve_app(app_for(state))
    record(state, "/api/chat", llm.invoke("hello"))
    llm.refresh(MODEL)
    with Browser.launch(chromium) as browser:
        page = browser.new_page(served.url + "/")
        names = page.wait_for(
            "(() => { const r = [...document.querySelectorAll('tr.backend')];"
            " return r.length == 2 && r.every(x => x.dataset.health == 'up')"
            " && r.map(x => x.dataset.name); })()"
        )
        assert names == ["gpu", "cpu"]
        text = page.text()
        assert gpu.url in text  # the URL (no credentials here) and the loaded model
        assert page.evaluate("document.querySelector('tr.loaded').dataset.model") == MODEL
        assert "in " in page.text("#loaded")  # the expiry, as time left
        assert page.evaluate("document.querySelectorAll('tr.speed').length") >= 1
        assert page.evaluate("document.querySelectorAll('tr.decision').length") == 1

        gpu.stop()
        answer = llm.invoke("hello again")
        assert answer.response_metadata["backend"] == "cpu"
        record(state, "/api/chat", answer)
        t0 = time.monotonic()
        row_text = page.wait_for(FAILED_OVER, timeout=5.0)
        shown_after = time.monotonic() - t0
        assert shown_after < 4.0, shown_after  # polled every second; room for a loaded CI
        assert "gpu: ConnectError [connect]" in row_text  # the attempt before it, and why
        assert "cpu tier (fallback)" in row_text  # the router's reasons for the CPU
        # The GPU's row counts the failure (by the next poll at the latest).
        page.wait_for("document.querySelector('tr.backend[data-name=gpu]').dataset.failed == '1'")


def test_browser_says_when_the_proxy_is_gone(state: State, serve_app: Any) -> None:
    chromium = require_chromium()
    served = serve_app(app_for(state))
    with Browser.launch(chromium) as browser:
        page = browser.new_page(served.url + "/")
        page.wait_for("document.querySelectorAll('tr.backend').length == 2")
        served.close()
        page.wait_for("document.getElementById('meta').className == 'stale'", timeout=5.0)
        assert "cannot reach the proxy" in page.text("#meta")
        # The last known state stays on the page.
        assert page.evaluate("document.querySelectorAll('tr.backend').length") == 2


def test_a_proxy_decision_with_status_error_and_skips_is_shown(
    state: State, serve_app: Any
) -> None:
    # The shape the proxy records: reasons as a list, plus status, skipped and error.
    state.decisions.append(
        {
            "time": time.time(),
            "endpoint": "/api/chat",
            "model": MODEL,
            "backend": None,
            "reasons": [],
            "attempts": [],
            "skipped": [{"backend": "gpu", "reason": "circuit open"}],
            "status": 503,
            "error": "no backend could serve llama3.2:1b",
        }
    )
    served = serve_app(app_for(state))
    (d,) = httpx.get(served.url + STATUS_PATH).json()["decisions"]
    assert (d["status"], d["backend"]) == (503, None)
    assert d["error"] == "no backend could serve llama3.2:1b"
    assert d["skipped"] == [{"backend": "gpu", "reason": "circuit open"}]

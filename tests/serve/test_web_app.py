"""examples/web_app.py: the design's web integration, over real HTTP and in a real browser.

The example's app is built over a HybridChatOllama in front of the two stand-ins and served
by uvicorn; headless chromium types into its page. The browser tests skip with a reason
when chromium is missing locally and fail in CI.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import webkit

from langchain_contextharbor import BackendConfig, HybridChatOllama
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.asgi import ServedApp
from langchain_contextharbor.testing.browser import Browser, Page, require_chromium
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="module")
def web_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("web_app", ROOT / "examples" / "web_app.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["web_app"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def llm(configs: list[BackendConfig]) -> Iterator[HybridChatOllama]:
    m = HybridChatOllama(model=MODEL, backends=configs)
    yield m
    m.close()


@pytest.fixture
def served(
    web_app: ModuleType,
    llm: HybridChatOllama,
    pair: tuple[OllamaStandIn, OllamaStandIn],
    serve_app: Any,
) -> Any:
    gpu, _ = pair
    return serve_app(web_app.build_app(llm, stop_gpu=gpu.stop))


def events(url: str, **params: str) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of one chat request, as (event, data) pairs."""
    out = []
    with httpx.stream("GET", url + "/chat/stream", params=params, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                assert event is not None
                out.append((event, json.loads(line[6:])))
                event = None
    return out


def test_the_chat_endpoint_streams_tokens_then_names_the_server(served: Any) -> None:
    got = events(served.url, session="s1", message="hi")
    tokens = [d["text"] for e, d in got if e == "token"]
    assert len(tokens) > 1, got  # streamed, not one blob
    assert "".join(tokens) == f"Hello from gpu ({MODEL}). You said: hi"
    assert got[-1] == ("done", {"backend": "gpu", "fallback": False})


def test_a_session_keeps_its_history_and_survives_the_gpu_stopping(
    served: Any, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    gpu, cpu = pair
    events(served.url, session="s2", message="first")
    gpu.stop()
    got = events(served.url, session="s2", message="second")
    assert "".join(d["text"] for e, d in got if e == "token").endswith("You said: second")
    assert got[-1] == ("done", {"backend": "cpu", "fallback": True})
    (req,) = cpu.requests_to("/api/chat")
    sent = [(m["role"], m["content"]) for m in req.body["messages"]]
    assert sent[0] == ("user", "first") and sent[-1] == ("user", "second")
    assert [r for r, _ in sent] == ["user", "assistant", "user"]  # the whole conversation


def test_bad_requests_and_no_server_at_all(
    served: Any, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    assert httpx.get(served.url + "/chat/stream", params={"session": "x"}).status_code == 400
    for srv in pair:
        srv.stop()
    got = events(served.url, session="s3", message="anyone?")
    assert [e for e, _ in got] == ["failed"]
    assert got[0][1]["message"]


# ---------------------------------------------------------------- in a real browser


def say(page: Page, text: str, turn: int) -> dict[str, Any]:
    """Type ``text``, send it, and wait for answer number ``turn`` (1-based) to end."""
    page.evaluate(
        f"document.getElementById('message').value = {json.dumps(text)};"
        " document.getElementById('send').click()"
    )
    state = page.wait_for(
        f"(() => {{ const a = document.querySelectorAll('#log .ai')[{turn - 1}];"
        " return a && a.dataset.state != 'streaming' && a.dataset.state; })()",
        timeout=20,
    )
    info: dict[str, Any] = page.evaluate(
        f"(() => {{ const a = document.querySelectorAll('#log .ai')[{turn - 1}];"
        " return {text: a.firstChild.data, note: a.querySelector('.note').textContent,"
        " backend: a.dataset.backend || null}; })()"
    )
    info["state"] = state
    return info


def test_browser_chat_keeps_answering_when_the_gpu_stops_mid_session(
    served: Any, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    chromium = require_chromium()
    gpu, _ = pair
    with Browser.launch(chromium) as browser:
        page = browser.new_page(served.url + "/")
        first = say(page, "hello there", 1)
        assert first == {
            "text": f"Hello from gpu ({MODEL}). You said: hello there",
            "note": "served by gpu",
            "backend": "gpu",
            "state": "done",
        }
        # Stop the GPU stand-in from the page itself (the demo endpoint), mid-session.
        assert page.evaluate(
            "fetch('demo/stop-gpu', {method: 'POST'}).then(r => r.json())"
        ) == {"stopped": "gpu"}
        assert not gpu.running
        second = say(page, "still there?", 2)
        assert second["state"] == "done" and second["backend"] == "cpu"
        assert second["text"] == f"Hello from cpu ({MODEL}). You said: still there?"
        assert second["note"] == "served by cpu (after a failover)"
        assert page.evaluate("document.querySelectorAll('#log .human').length") == 2


def test_browser_shows_a_cut_answer_once_and_goes_on(
    served: Any, pair: tuple[OllamaStandIn, OllamaStandIn]
) -> None:
    chromium = require_chromium()
    gpu, _ = pair
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=3)
    with Browser.launch(chromium) as browser:
        page = browser.new_page(served.url + "/")
        cut = say(page, "tell me", 1)
        full = f"Hello from gpu ({MODEL}). You said: tell me"
        assert cut["state"] == "failed" and cut["note"] == "the answer was cut"
        assert cut["text"] and full.startswith(cut["text"]) and cut["text"] != full  # once
        after = say(page, "again", 2)
        assert after["state"] == "done" and after["text"].endswith("You said: again")


def test_the_script_serves_the_page_on_embedded_standins(tmp_path: Path) -> None:
    """``python examples/web_app.py --port N`` as a user runs it, with no Ollama around."""
    import os
    import socket
    import subprocess
    import time

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OLLAMA_GPU_URL": dead, "OLLAMA_CPU_URL": dead}
    env.pop("CONTEXTHARBOR_EXAMPLE_MODEL", None)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "web_app.py"), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.1)
        assert events(url, session="a", message="hi")[-1] == (
            "done",
            {"backend": "gpu", "fallback": False},
        )
        assert httpx.post(url + "/demo/stop-gpu").json() == {"stopped": "gpu"}
        assert events(url, session="a", message="hi")[-1][1]["backend"] == "cpu"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "using two embedded stand-ins" in out and f"Chat page on {url}/" in out

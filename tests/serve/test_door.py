"""The door's lock: API keys, the body size limit, the bind warning, no backend secret out."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import httpx
import ollama
import pytest
from servekit import MODEL, Proxy

from langchain_contextharbor import BackendConfig, Timeouts
from langchain_contextharbor.cli import main
from langchain_contextharbor.errors import ConfigurationError
from langchain_contextharbor.serve import ServeConfig
from langchain_contextharbor.serve._cli import bind_warning, resolve_serve_backends
from langchain_contextharbor.testing import OllamaStandIn

Pair = tuple[OllamaStandIn, OllamaStandIn]
HI = [{"role": "user", "content": "hi"}]
KEY = "sk-local-0123456789"


def test_a_key_is_required_when_set(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(ServeConfig(api_keys=(KEY,)))
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=proxy.url, timeout=30).chat(model=MODEL, messages=HI)
    assert err.value.status_code == 401 and "API key" in err.value.error
    r = httpx.get(f"{proxy.url}/api/tags", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()) == {"error"}  # Ollama's shape
    ok = ollama.Client(host=proxy.url, timeout=30, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.chat(model=MODEL, messages=HI).message.content.startswith("Hello from gpu")
    assert httpx.head(proxy.url + "/").status_code == 200  # the liveness check stays open
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.AuthenticationError) as oerr:
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert oerr.value.code == "invalid_api_key"  # OpenAI's shape under /v1
    good = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=KEY, max_retries=0)
    assert MODEL in {m.id for m in good.models.list()}


def test_a_body_over_the_limit_is_413(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(ServeConfig(max_body_bytes=2000))
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(f"{proxy.url}/api/chat", json=big)
    assert r.status_code == 413 and "too large" in r.json()["error"]

    def chunks() -> object:  # no Content-Length: counted as it arrives
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    r = httpx.post(f"{proxy.url}/api/chat", content=chunks())  # type: ignore[arg-type]
    assert r.status_code == 413
    r = httpx.post(f"{proxy.url}/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    small = {"model": MODEL, "messages": HI, "stream": False}
    assert httpx.post(f"{proxy.url}/api/chat", json=small).status_code == 200


def test_a_network_bind_without_a_key_warns() -> None:
    assert bind_warning("127.0.0.1", ()) is None
    assert bind_warning("::1", ()) is None
    assert bind_warning("0.0.0.0", (KEY,)) is None
    text = bind_warning("0.0.0.0", ())
    assert text is not None and "no API key" in text and "--api-key" in text


def test_the_cli_warns_and_binds_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pair: Pair
) -> None:
    import uvicorn

    gpu, cpu = pair
    ran: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append(kw))
    monkeypatch.delenv("CONTEXTHARBOR_SERVE_API_KEY", raising=False)
    backends = ["--backend", f"gpu={gpu.url}", "--backend", f"cpu={cpu.url}"]
    assert main(["serve", *backends]) == 0
    assert ran[-1]["host"] == "127.0.0.1" and ran[-1]["port"] == 11400
    assert "WARNING" not in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--port", "11499", *backends]) == 0
    assert "WARNING" in capsys.readouterr().err
    monkeypatch.setenv("CONTEXTHARBOR_SERVE_API_KEY", KEY)
    assert main(["serve", "--host", "0.0.0.0", *backends]) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "API key required" in err and KEY not in err


def test_a_backend_that_is_the_proxy_itself_is_refused() -> None:
    args = argparse.Namespace(
        backend=[("gpu", "http://127.0.0.1:11400")], host="127.0.0.1", port=11400
    )
    with pytest.raises(ConfigurationError, match="loop"):
        resolve_serve_backends(args)


def test_no_backend_secret_in_any_answer_or_log(
    make_proxy: Callable[..., Proxy], pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    gpu, cpu = pair
    t = Timeouts(connect=5.0, first_token=10.0, idle=10.0, probe=5.0)
    secret_pw, token = "hunter2-password", "tok-abcdef-123456"
    backends = [
        BackendConfig(
            name="gpu",
            base_url=gpu.url.replace("http://", f"http://admin:{secret_pw}@"),
            timeouts=t,
        ),
        BackendConfig(
            name="cpu",
            base_url=cpu.url,
            kind="cpu",
            headers={"Authorization": f"Bearer {token}"},
            timeouts=t,
        ),
    ]
    proxy = make_proxy(backends=backends)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def look(r: httpx.Response) -> None:
        seen.append(r.text + str(r.headers))

    look(httpx.post(f"{proxy.url}/api/chat", json={"model": MODEL, "messages": HI}))
    look(httpx.get(f"{proxy.url}/api/tags"))
    gpu.stop()
    look(httpx.post(f"{proxy.url}/api/chat", json={"model": MODEL, "messages": HI}, timeout=30))
    cpu.stop()
    for path in ("/api/chat", "/api/embed"):
        body = {"model": MODEL, "messages": HI, "input": "x"}
        look(httpx.post(proxy.url + path, json=body, timeout=30))
    look(httpx.get(f"{proxy.url}/api/ps", timeout=30))
    look(httpx.get(f"{proxy.url}/v1/models", timeout=30))
    assert any("gpu" in s for s in seen[2:])  # the failures were reported ...
    for text in [*seen, caplog.text, repr(list(proxy.state.decisions))]:
        assert secret_pw not in text and token not in text  # ... without the secrets


def test_python_m_serve_runs_as_a_process(pair: Pair) -> None:
    """The module entry point, as a user starts it: answers, then stops on SIGINT."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from servekit import free_port

    gpu, cpu = pair
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "langchain_contextharbor.serve",
            "--backend",
            f"gpu={gpu.url}",
            "--backend",
            f"cpu={cpu.url}",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/api/version", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.1)
        answer = ollama.Client(host=url, timeout=30).chat(model=MODEL, messages=HI)
        assert answer.message.content.startswith("Hello from gpu")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port} -> gpu=" in err

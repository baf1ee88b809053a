"""The ``contextharbor`` pytest plugin works for a user's own suite, out of the box.

Run as a separate pytest process on a throw-away test file, because what matters is what a
user gets from merely installing the package: the entry point, the fixtures, the clean-up
(even of a stand-in left hanging on a fault) and the ``llama``/``internet`` markers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.pytest_plugin import llama_skip_reason

USER_TESTS = """
import httpx
import pytest
import ollama
import pytest

from langchain_contextharbor.testing import Fault

PORTS = []


def test_one_line(ollama_standin):
    assert httpx.get(ollama_standin.url).text == "Ollama is running"
    client = ollama.Client(host=ollama_standin.url, timeout=5)
    ollama_standin.inject(Fault.BUSY, count=1)
    with pytest.raises(ollama.ResponseError):
        client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}])
    reply = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}])
    assert "from ollama" in reply.message.content


def test_factory(ollama_standin_factory):
    gpu = ollama_standin_factory(name="gpu", loaded=["llama3.2:1b"])
    cpu = ollama_standin_factory(name="cpu", gpu_fraction=0.0, loaded=["llama3.2:1b"])
    assert ollama.Client(host=cpu.url, timeout=5).ps().models[0].size_vram == 0
    PORTS.extend([gpu.port, cpu.port])
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK)
    with pytest.raises(httpx.ReadTimeout):
        ollama.Client(host=gpu.url, timeout=0.2).chat(
            model="llama3.2:1b", messages=[{"role": "user", "content": "x"}]
        )


def test_factory_cleaned_up():
    assert PORTS
    for port in PORTS:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}", timeout=2)


@pytest.mark.internet
def test_needs_internet():
    raise AssertionError("must be skipped")
"""


def test_plugin_in_a_user_suite(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    env = {k: v for k, v in os.environ.items() if k != "CONTEXTHARBOR_INTERNET"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "3 passed, 1 skipped" in out, out
    assert "CONTEXTHARBOR_INTERNET=1" in out


def test_fixture_in_process(ollama_standin: OllamaStandIn) -> None:
    assert ollama_standin.running and ollama_standin.name == "ollama"
    assert [m.name for m in ollama_standin.models] == ["llama3.2:1b"]
    assert httpx.get(ollama_standin.url + "/api/version").json() == {"version": "0.14.3"}


def test_llama_skip_reason_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    import langchain_contextharbor.testing.pytest_plugin as plugin

    monkeypatch.setattr(plugin, "llama_cpp_available", lambda: False)
    assert "llama-cpp-python is not installed" in (llama_skip_reason() or "")
    monkeypatch.setattr(plugin, "llama_cpp_available", lambda: True)
    monkeypatch.setattr(plugin, "smollm2_gguf_path", lambda: None)
    assert "SmolLM2 GGUF not found" in (llama_skip_reason() or "")

"""Every script in examples/ runs, as a user would run it, and says which servers it used.

Each runs in a fresh interpreter with a timeout. With the Ollama URLs pointing at a port
where nothing listens, the examples start their embedded stand-ins; two of them also run
in "real Ollama" mode against stand-ins the test starts as the servers at those URLs (the
same HTTP API), so both branches of ``examples/_servers.py`` are exercised.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from langchain_contextharbor.testing import StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

ROOT = Path(__file__).resolve().parents[2]
# rag_chain.py runs in tests/rag/test_rag_example.py (its own checks; ~20 s with llama.cpp);
# web_app.py is a server (it runs until stopped): tests/serve/test_web_app.py runs it.
COVERED_ELSEWHERE = {"rag_chain.py", "web_app.py"}
EXAMPLES = sorted(
    p.name
    for p in (ROOT / "examples").glob("*.py")
    if not p.name.startswith("_") and p.name not in COVERED_ELSEWHERE
)
# What each must print (beyond exiting 0) in stand-in mode.
EXPECT = {
    "demo.py": "failover: the GPU server goes down",
    "quickstart.py": "served by: gpu",
    "streaming.py": "[async, served by gpu]",
    "tool_agent.py": "tool get_time -> 10:30 in Tokyo",
    "langgraph_agent.py": " tool: sunny in Lima",
    "structured_output.py": "parsed: name=",
    "failover.py": "call 2: served by cpu; failed attempts before it: ['gpu (connect",
    "own_failover_test.py": "3 passed",
}


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _run(script: str, gpu_url: str, cpu_url: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OLLAMA_GPU_URL": gpu_url,
        "OLLAMA_CPU_URL": cpu_url,
    }
    env.pop("CONTEXTHARBOR_EXAMPLE_MODEL", None)
    env.update(extra)
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=170,
    )


def test_every_example_is_listed_here() -> None:
    assert set(EXAMPLES) <= set(EXPECT), EXAMPLES
    assert (ROOT / "tests" / "rag" / "test_rag_example.py").exists()


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs_on_embedded_standins(script: str) -> None:
    dead = _dead_url()
    r = _run(script, dead, dead)
    assert r.returncode == 0, r.stdout + r.stderr
    if script != "own_failover_test.py":  # a test file: its stand-ins are fixtures
        assert "stand-in" in r.stdout
    if script in EXPECT:
        assert EXPECT[script] in r.stdout, r.stdout


@pytest.mark.parametrize("script", ["quickstart.py", "failover.py"])
def test_example_uses_the_servers_that_answer(
    script: str, ollama_standin_factory: StandInFactory
) -> None:
    gpu = ollama_standin_factory(name="gpu")
    cpu = ollama_standin_factory(name="cpu", gpu_fraction=0.0)
    r = _run(script, gpu.url, cpu.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Using real Ollama at {gpu.url}, {cpu.url}" in r.stdout
    assert gpu.requests_to("/api/chat") or cpu.requests_to("/api/chat")
    if script == "failover.py":
        assert "call 3: served by cpu" in r.stdout  # a dead "gpu" URL, the real one behind it


@pytest.mark.parametrize("script", ["quickstart.py", "failover.py", "demo.py", "tool_agent.py"])
def test_examples_pick_a_model_that_can_chat(
    script: str, ollama_standin_factory: StandInFactory
) -> None:
    """The README has users pull nomic-embed-text, and a server lists the model pulled last
    first: the examples took it and crashed (``"nomic-embed-text:latest" does not support
    chat``). They read ``/api/show`` capabilities and take the first model that chats."""
    gpu = ollama_standin_factory(name="gpu")
    cpu = ollama_standin_factory(name="cpu", gpu_fraction=0.0)
    for server in (gpu, cpu):
        server.add_model(StandInModel("nomic-embed-text"))  # pulled last: listed first
    r = _run(script, gpu.url, cpu.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "does not support" not in r.stdout + r.stderr
    chats = gpu.requests_to("/api/chat") + cpu.requests_to("/api/chat")
    assert chats and {req.body["model"] for req in chats} == {"llama3.2:1b"}


@pytest.mark.parametrize("script", ["quickstart.py", "demo.py"])
def test_one_variable_picks_the_model_of_every_example(
    script: str, ollama_standin_factory: StandInFactory
) -> None:
    """``make demo`` read ``CONTEXTHARBOR_DEMO_MODEL``, the examples
    ``CONTEXTHARBOR_EXAMPLE_MODEL``: now both read the one the README documents."""
    models: list[StandInModel | str] = ["llama3.2:1b", StandInModel("qwen2.5:0.5b")]
    gpu = ollama_standin_factory(name="gpu", models=models)
    cpu = ollama_standin_factory(name="cpu", models=models, gpu_fraction=0.0)
    r = _run(script, gpu.url, cpu.url, CONTEXTHARBOR_EXAMPLE_MODEL="qwen2.5:0.5b")
    assert r.returncode == 0, r.stdout + r.stderr
    chats = gpu.requests_to("/api/chat") + cpu.requests_to("/api/chat")
    assert chats and {req.body["model"] for req in chats} == {"qwen2.5:0.5b"}
    for path in [*(ROOT / "examples").glob("*.py"), ROOT / "README.md", ROOT / "Makefile"]:
        assert "CONTEXTHARBOR_DEMO_MODEL" not in path.read_text(), path

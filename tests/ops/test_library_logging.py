"""The library is quiet unless the application configures logging.

Why: without a handler on the package logger, the WARNING a failover logs reaches Python's
last-resort handler and is printed to stderr in every script and notebook that never set up
logging. The package adds a ``NullHandler``; these tests run a real failover (the "GPU"
stand-in is stopped, so its port refuses) in a fresh interpreter and look at stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from langchain_contextharbor import BackendConfig, HybridChatOllama
    from langchain_contextharbor.testing import OllamaStandIn

    if sys.argv[1] == "configured":
        logging.basicConfig(level=logging.WARNING)
    with OllamaStandIn(name="gpu") as gpu, OllamaStandIn(name="cpu", gpu_fraction=0.0) as cpu:
        llm = HybridChatOllama(
            model="llama3.2:1b",
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url),
                BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
            ],
        )
        llm.invoke("warm up")  # the first call plans on probes: both servers are up
        gpu.stop()
        msg = llm.invoke("hi")
        print("served by", msg.response_metadata["backend"])
        llm.close()
    """
)


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_a_failover_prints_nothing_when_logging_is_not_configured() -> None:
    r = _run("unconfigured")
    assert r.returncode == 0, r.stderr
    assert "served by cpu" in r.stdout
    assert r.stderr == ""


def test_the_application_still_sees_the_failover_once_it_configures_logging() -> None:
    r = _run("configured")
    assert r.returncode == 0, r.stderr
    assert "served by cpu" in r.stdout
    assert "langchain_contextharbor" in r.stderr and "gpu" in r.stderr

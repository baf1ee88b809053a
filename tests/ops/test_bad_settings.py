"""No setting can crash ``import langchain_contextharbor`` (issue 18); a bad one is reported
at first use, as a ``ConfigurationError`` naming it (the CLI: one line, exit 1).

Each case imports the package in a fresh interpreter with one environment variable set to
garbage: the variables this package reads, and those that ``import ollama`` reads for its
module-level default client (it raised from inside that import, e.g. ``ValueError: Port out
of range 0-65535`` for ``OLLAMA_HOST=127.0.0.1:99999``).
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

from langchain_contextharbor import (
    BackendConfig,
    ConfigurationError,
    EmptyResponseError,
    HybridChatOllama,
    HybridOllamaEmbeddings,
    Timeouts,
)
from langchain_contextharbor.testing import OllamaStandIn

ROOT = Path(__file__).resolve().parents[2]

# What the interpreter prints: that the import went through, that the environment is as the
# user set it (nothing hidden is left hidden), and how many handlers the package logger has.
SCRIPT = """
import logging, os, sys
name, value = sys.argv[1], sys.argv[2]
import langchain_contextharbor
import ollama, langchain_ollama
assert os.environ.get(name) == value, (name, os.environ.get(name))
print("imported", len(logging.getLogger("langchain_contextharbor").handlers))
"""

BAD = [
    ("OLLAMA_HOST", "127.0.0.1:99999"),  # the case: port out of range
    ("OLLAMA_HOST", "127.0.0.1:abc"),
    ("OLLAMA_HOST", "http://[::1"),
    ("OLLAMA_API_KEY", "cl\u00e9"),  # not ASCII: httpx cannot send it as a header
    ("HTTPS_PROXY", "garbage://x"),
    ("HTTP_PROXY", "http://:99999"),
    ("ALL_PROXY", "::"),
    ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
    ("OLLAMA_GPU_URL", "::"),
    ("OLLAMA_CPU_URL", "http://x:99999"),
    ("CONTEXTHARBOR_REDIS_URL", "garbage"),
    ("CUDA_VISIBLE_DEVICES", "zz"),
]


def _env(name: str, value: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), name: value}


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_no_setting_crashes_the_import(name: str, value: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, name, value],
        env=_env(name, value),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "imported 1"  # one NullHandler, as without the guard
    # nothing printed: a library does not write to stderr (its WARNING goes to its logger)
    assert proc.stderr == "", proc.stderr[-2000:]


def test_a_bad_ollama_host_is_a_configuration_error_at_first_use() -> None:
    script = (
        "from langchain_contextharbor import ConfigurationError, HybridChatOllama\n"
        "try:\n"
        "    HybridChatOllama(model='llama3.2:1b')\n"
        "except ConfigurationError as exc:\n"
        "    print('ConfigurationError:', exc)\n"
    )
    env = _env("OLLAMA_HOST", "127.0.0.1:99999")
    env.pop("OLLAMA_GPU_URL", None)  # OLLAMA_HOST is the GPU server's address when unset
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith("ConfigurationError: OLLAMA_HOST"), line
    assert "port must be 1..65535" in line


def test_the_cli_reports_a_bad_ollama_host_in_one_line() -> None:
    env = _env("OLLAMA_HOST", "127.0.0.1:99999")
    env.pop("OLLAMA_GPU_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "langchain_contextharbor", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("contextharbor: error: OLLAMA_HOST"), lines[0]
    assert "port must be 1..65535" in lines[0]


# --------------------------------------------------------------- bad values given in code
# A bad value written in code is reported at construction, as a ConfigurationError (also a
# ValueError) whose text names the setting, before any request is made.

BAD_NUM_CTX = [-5, 0, math.nan, 2.5, "big", "4096", True]


@pytest.mark.parametrize("cls", [HybridChatOllama, HybridOllamaEmbeddings])
@pytest.mark.parametrize("value", BAD_NUM_CTX, ids=repr)
def test_a_bad_num_ctx_is_a_configuration_error(cls: type[Any], value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"num_ctx: must be a whole number") as info:
        cls(model="m", base_url="http://127.0.0.1:9", num_ctx=value, background_probes=False)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("cls", [HybridChatOllama, HybridOllamaEmbeddings])
def test_a_good_num_ctx_is_kept(cls: type[Any]) -> None:
    m = cls(model="m", base_url="http://127.0.0.1:9", num_ctx=8192, background_probes=False)
    assert m.num_ctx == 8192


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"connect": 0}, "connect"),
        ({"first_token": -1}, "first_token"),
        ({"idle": math.nan}, "idle"),
        ({"probe": math.inf}, "probe"),
        ({"total": 0}, "total"),
        ({"read": 3}, "read"),
    ],
)
def test_bad_timeouts_are_a_configuration_error(kwargs: dict[str, Any], field: str) -> None:
    """``Timeouts(connect=0)`` raised pydantic's own ``ValidationError``."""
    with pytest.raises(ConfigurationError) as info:
        Timeouts(**kwargs)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, pydantic.ValidationError)
    assert str(info.value).startswith(f"invalid Timeouts configuration: {field}:"), info.value


def test_a_bad_backend_config_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"^invalid BackendConfig configuration: max_par"):
        BackendConfig(name="b", base_url="http://127.0.0.1:9", max_parallel=0)


# ------------------------------------------------------------------------- no messages
def _empty_calls() -> list[tuple[str, Callable[[HybridChatOllama], Any]]]:
    async def agen(llm: HybridChatOllama) -> None:
        async for _ in llm.astream([]):
            pass

    return [
        ("invoke", lambda llm: llm.invoke([])),
        ("stream", lambda llm: list(llm.stream([]))),
        ("batch", lambda llm: llm.batch([[]])),
        ("ainvoke", lambda llm: asyncio.run(llm.ainvoke([]))),
        ("astream", lambda llm: asyncio.run(agen(llm))),
    ]


@pytest.mark.parametrize(("name", "call"), _empty_calls(), ids=[n for n, _ in _empty_calls()])
def test_no_messages_is_refused_before_anything_is_sent(
    ollama_standin: OllamaStandIn, name: str, call: Callable[[HybridChatOllama], Any]
) -> None:
    """``llm.invoke([])`` went to Ollama, which only loads the model for a chat without
    messages (``done_reason='load'``): the caller got ``EmptyResponseError``."""
    llm = HybridChatOllama(model="llama3.2:1b", base_url=ollama_standin.url)
    try:
        llm.invoke("hi")  # the model works, over real HTTP
        ollama_standin.clear_log()
        with pytest.raises(ValueError, match="was given no messages") as info:
            call(llm)
        assert not isinstance(info.value, EmptyResponseError)
        assert ollama_standin.requests_to("/api/chat") == []
    finally:
        llm.close()

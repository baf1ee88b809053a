"""docs/migration.md: the replacement for each call of the original hybrid_router runs.

The document's Python block is executed as written (inside an async function, since the
original API was async) against two Ollama stand-ins named by OLLAMA_GPU_URL /
OLLAMA_CPU_URL, as a migrating user's environment would name real servers.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_contextharbor import reset_default_model
from langchain_contextharbor.cli import main
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

DOC = Path(__file__).resolve().parents[2] / "docs" / "migration.md"


@pytest.fixture
def servers(
    ollama_standin_factory: StandInFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str]]:
    gpu = ollama_standin_factory(name="gpu")
    cpu = ollama_standin_factory(name="cpu", gpu_fraction=0.0)
    monkeypatch.setenv("OLLAMA_GPU_URL", gpu.url)
    monkeypatch.setenv("OLLAMA_CPU_URL", cpu.url)
    reset_default_model()  # smart_chat's instance is built from this environment
    yield gpu.url, cpu.url
    reset_default_model()


def test_every_python_replacement_in_the_migration_guide_runs(servers: tuple[str, str]) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    source = "async def _migrated(gpu_url, cpu_url):\n" + textwrap.indent(block, "    ")
    namespace: dict[str, object] = {}
    exec(compile(source, str(DOC), "exec"), namespace)
    asyncio.run(namespace["_migrated"](*servers))  # type: ignore[operator]


def test_the_original_flags_print_the_original_shapes(
    servers: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    assert main(["--check"]) == 0
    check = json.loads(capsys.readouterr().out)
    for entry in check.values():
        assert {"status", "url", "is_gpu", "version", "error"} <= set(entry)
    assert main(["--models"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "gpu": ["llama3.2:1b"],
        "cpu": ["llama3.2:1b"],
    }

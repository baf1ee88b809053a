"""examples/rag_chain.py runs as documented when no Ollama answers (embedded stand-ins)."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from langchain_contextharbor.testing import StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rag_chain.py"


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def run_example(monkeypatch: pytest.MonkeyPatch) -> int:
    # As `python examples/rag_chain.py` does: the script's folder is importable (_servers).
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    spec = importlib.util.spec_from_file_location("rag_chain_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code: int = module.main()
    return code


def test_example_runs_on_embedded_stand_ins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_GPU_URL", dead_url())
    monkeypatch.setenv("OLLAMA_CPU_URL", dead_url())
    monkeypatch.setenv("CONTEXTHARBOR_RAG_ENGINE", "scripted")
    assert run_example(monkeypatch) == 0
    out = capsys.readouterr().out
    assert "no Ollama answers: embedded stand-ins with the scripted engine" in out
    assert out.count("Ingrid Solberg") == 2  # answered twice, from the one right document
    assert "Hello from gpu" in out and "Hello from cpu" in out
    assert "query embedded on: cpu" in out
    assert "refused, as it should be" in out and "pull the same build" in out


def test_example_uses_the_servers_that_answer(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ollama_standin_factory: StandInFactory,
) -> None:
    models: list[StandInModel | str] = ["llama3.2:1b", "nomic-embed-text"]
    gpu = ollama_standin_factory(name="gpu", models=models)
    cpu = ollama_standin_factory(name="cpu", models=models, gpu_fraction=0.0)
    monkeypatch.setenv("OLLAMA_GPU_URL", gpu.url)
    monkeypatch.setenv("OLLAMA_CPU_URL", cpu.url)
    monkeypatch.delenv("CONTEXTHARBOR_EXAMPLE_MODEL", raising=False)
    assert run_example(monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"Using real Ollama at {gpu.url}, {cpu.url} with model llama3.2:1b" in out
    assert "Ingrid Solberg" in out and "expected_digest=" in out
    assert gpu.requests_to("/api/embed") and gpu.requests_to("/api/chat")


def test_every_test_the_embeddings_doc_names_exists() -> None:
    """docs/embeddings.md backs its claims with test names: they must not go stale."""
    import re

    root = EXAMPLE.parents[1]
    doc = (root / "docs" / "embeddings.md").read_text()
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", doc))
    sources = "".join(p.read_text() for p in (root / "tests").rglob("test_*.py"))
    defined = set(re.findall(r"def (test_\w+)", sources))
    assert len(named) > 10 and named <= defined, sorted(named - defined)

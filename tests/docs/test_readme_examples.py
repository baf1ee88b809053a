"""README.md stays true to the code: every code block runs, every table matches.

- the Python blocks run in order, as one session (top-level ``await`` included), in a
  fresh interpreter against two Ollama stand-ins named by ``OLLAMA_GPU_URL`` /
  ``OLLAMA_CPU_URL``, as a reader's environment would name real servers;
- the user's failover test example passes under pytest;
- every line of the ``bash`` blocks is either run here (the ``contextharbor`` commands, against
  the stand-ins) or named below with the test that covers it;
- the ``text`` block of the routing plan is what the code prints;
- the configuration tables list every constructor option, environment variable and
  default of the code;
- the names in the Mermaid diagrams exist.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel

import langchain_contextharbor as pkg
from langchain_contextharbor import BackendConfig, BreakerPolicy, HybridChatOllama, Timeouts
from langchain_contextharbor.cli import main
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TEXT = README.read_text()

# bash lines not run here, and what covers each.
COVERED_ELSEWHERE = {
    "make demo": ".ci/run and tests/docs/test_examples.py (examples/demo.py)",
    "make test": ".ci/run runs exactly this",
    "git clone": "not testable offline",
    "python3 -m pip install .": "tests/ops/test_packaging.py (built wheel, fresh venv)",
    "python3 -m pip install '.[prometheus]'": "tests/ops/test_packaging.py",
    "python3 -m pip wheel": "tests/ops/test_packaging.py",
    "python3 -m pip install dist/": "tests/ops/test_packaging.py",
    "scripts/setup_hybrid_ollama.sh": "tests/ops/test_setup_script.py",
    "python3 -m pip install '.[agents]'": "test_the_agents_extra_installs_what_create_agent_needs",
    "python3 -m pip install '.[serve]'": "test_the_serve_extra_installs_starlette_and_uvicorn",
    "contextharbor-standin": "readme_servers: the Python blocks run against exactly these",
}


def blocks(lang: str) -> list[str]:
    return [str(b) for b in re.findall(rf"```{lang}\n(.*?)```", TEXT, re.S)]


@pytest.fixture
def servers(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    models = ["llama3.1:8b", "llama3.2:1b", "nomic-embed-text"]
    gpu = ollama_standin_factory(name="gpu", models=models)
    cpu = ollama_standin_factory(name="cpu", models=models, gpu_fraction=0.0)
    return gpu, cpu


@dataclasses.dataclass(frozen=True)
class Started:
    """A stand-in started from a README command line, in its own process."""

    url: str


@pytest.fixture
def readme_servers() -> Iterator[tuple[Started, Started]]:
    """The servers the README tells a reader to start, started from its own command lines
    (``contextharbor-standin ...``): the GPU one and the CPU one, by their default port.
    Each gets a free port instead of 11434/11435, which a real Ollama may hold here; the
    README says to name other ports in ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL``."""
    lines = [
        line.split(" #", 1)[0].strip().removesuffix("&").strip()
        for block in blocks("bash")
        for line in block.splitlines()
        if line.startswith("contextharbor-standin ")
    ]
    assert len(lines) == 2, lines
    procs: list[subprocess.Popen[str]] = []
    started: dict[str, Started] = {}
    try:
        for line in lines:
            args = shlex.split(line)[1:]
            port = args[args.index("--port") + 1]
            args[args.index("--port") + 1] = "0"
            proc = subprocess.Popen(
                [sys.executable, "-m", "langchain_contextharbor.testing", *args],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            procs.append(proc)
            assert proc.stdout is not None
            first = proc.stdout.readline()  # "listening on http://HOST:PORT (name)"
            assert first.startswith("listening on "), first
            started[port] = Started(first.split()[2])
        yield started["11434"], started["11435"]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def _env(gpu: OllamaStandIn | Started, cpu: OllamaStandIn | Started) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in {"OLLAMA_HOST", "CONTEXTHARBOR_REDIS_URL"}
    }
    env.update(PYTHONPATH=str(ROOT), OLLAMA_GPU_URL=gpu.url, OLLAMA_CPU_URL=cpu.url)
    return env


def test_readme_python_blocks_run_in_order(
    readme_servers: tuple[Started, Started], tmp_path: Path
) -> None:
    """Against the stand-ins the README's own commands start (not a fixture's models: the
    ten-line example named a model those commands did not serve)."""
    session = "\n\n".join(blocks("python"))
    script = tmp_path / "readme_session.py"
    script.write_text(
        "import asyncio\n\n\nasync def readme() -> None:\n"
        + textwrap.indent(session, "    ")
        + "\n\nasyncio.run(readme())\nprint('README session done')\n"
    )
    r = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=_env(*readme_servers),
        cwd=tmp_path,
        timeout=170,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "README session done" in r.stdout


def _block_containing(marker: str) -> str:
    for block in blocks("python"):
        if marker in block:
            return block
    raise AssertionError(f"no python block in README.md contains {marker!r}")


def test_readme_failover_test_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_my_failover=_block_containing("def test_my_app_survives"))
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_readme_bash_lines_run_or_are_covered_elsewhere(
    servers: tuple[OllamaStandIn, OllamaStandIn],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in _env(*servers).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    ran = 0
    for block in blocks("bash"):
        for raw in block.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            if words[0] == "contextharbor" or words[:3] == [
                "python",
                "-m",
                "langchain_contextharbor",
            ]:
                args = words[1:] if words[0] == "contextharbor" else words[3:]
                code = main(args)
                out = capsys.readouterr()
                assert code == 0, (line, out.out, out.err)
                ran += 1
            else:
                assert any(line.startswith(k) for k in COVERED_ELSEWHERE), (
                    f"README bash line neither run nor covered: {line!r}"
                )
    assert ran >= 5


def test_readme_route_text_is_what_the_code_prints() -> None:
    (shown,) = [b for b in blocks("text") if b.startswith("route for 'llama3.1:70b'")]
    llm = HybridChatOllama(
        model="llama3.1:8b",
        backends=[
            BackendConfig(name="gpu", base_url="http://127.0.0.1:9"),
            BackendConfig(name="cpu", base_url="http://127.0.0.1:10", kind="cpu"),
        ],
        background_probes=False,
    )
    plan = llm.select_backend("llama3.1:70b", num_ctx=8192)
    assert shown.strip() == plan.explain().splitlines()[0]
    llm.close()


def _options_table() -> dict[str, str]:
    """``{option: default cell}`` from the README's options table."""
    start = TEXT.index("| option | default | meaning |")
    rows: dict[str, str] = {}
    for line in TEXT[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        names, default = line.split("|")[1:3]
        for name in re.findall(r"`(\w+)`", names):
            rows[name] = default.strip()
    return rows


def _literal(value: Any) -> str:
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def test_readme_options_table_lists_every_option_with_its_default() -> None:
    rows = _options_table()
    base = set(BaseChatModel.model_fields)
    own = {n: f for n, f in HybridChatOllama.model_fields.items() if n not in base}
    assert set(own) <= set(rows), sorted(set(own) - set(rows))
    assert set(rows) <= set(own), sorted(set(rows) - set(own))
    for name, field in own.items():
        if field.default_factory is None and field.is_required() is False:
            assert rows[name] == _literal(field.default), (name, rows[name], field.default)


def test_readme_names_every_field_of_the_small_config_objects() -> None:
    pairs = dict(re.findall(r"`(\w+)`\s+\(`([^`]+)`", TEXT))
    for cls in (BackendConfig, Timeouts, BreakerPolicy):
        fields = (
            {f.name: f.default for f in dataclasses.fields(cls)}
            if dataclasses.is_dataclass(cls)
            else {n: f.default for n, f in cls.model_fields.items()}
        )
        for name, default in fields.items():
            if name in {"name", "base_url"}:
                assert f"`{name}`" in TEXT or name in "BackendConfig(name, base_url"
                continue
            assert name in pairs, (cls.__name__, name)
            if isinstance(default, str):
                assert pairs[name] == f'"{default}"', (cls.__name__, name, pairs[name])
            elif isinstance(default, (bool, int, float)) or default is None:
                assert pairs[name] == repr(default), (cls.__name__, name, pairs[name])


def test_readme_lists_every_environment_variable_the_package_reads() -> None:
    names = set()
    for path in (ROOT / "langchain_contextharbor").glob("*.py"):
        names |= set(re.findall(r'^[A-Z_]*ENV = "([A-Z_]+)"', path.read_text(), re.M))
    assert {"OLLAMA_GPU_URL", "OLLAMA_CPU_URL"} <= names
    table = TEXT[TEXT.index("| environment variable |") :].split("\n\n", 1)[0]
    for name in names:
        assert f"`{name}`" in table, name


def test_readme_diagrams_name_things_that_exist() -> None:
    diagrams = "\n".join(blocks("mermaid"))
    assert diagrams.count("flowchart") == 2
    for module in re.findall(r"\b(\w+\.py)\b", diagrams):
        assert (ROOT / "langchain_contextharbor" / module).exists(), module
    for func in re.findall(r"\b(\w+)\(\)", diagrams):
        assert hasattr(pkg, func) or hasattr(HybridChatOllama, func), func
    for cls in re.findall(r"\b([A-Z]\w+(?:Ollama|Embeddings|Breaker|Error))\b", diagrams):
        assert cls in pkg.__all__ or cls == "ChatOllama", cls  # ChatOllama: langchain-ollama


def test_readme_figures_are_the_ones_in_docs_benchmarks() -> None:
    region = TEXT[
        TEXT.index("<!-- figures: docs/benchmarks.md -->") : TEXT.index("<!-- /figures -->")
    ]
    bench = (ROOT / "docs" / "benchmarks.md").read_text()
    figures = re.findall(r"\d[\d,]*(?:\.\d+)?(?: ms| s|\u00d7)", region)  # \u00d7: times sign
    assert len(figures) >= 10, figures
    missing = [f for f in figures if f not in bench]
    assert not missing, f"README figures not in docs/benchmarks.md: {missing}"
    for script in re.findall(r"`(bench_\w+\.py)`", region):
        assert (ROOT / "benchmarks" / script).exists(), script
        assert f"benchmarks/{script}" in bench, script


def test_the_testing_helpers_the_readme_names_import_from_where_it_says() -> None:
    """``FakeClock`` was named beside ``langchain_contextharbor.testing`` without its module,
    and ``from langchain_contextharbor.testing import FakeClock`` fails."""
    named = re.findall(r"`(\w+)` \(in `(langchain_contextharbor[\w.]*)`\)", TEXT)
    assert ("FakeClock", "langchain_contextharbor.testing.clock") in named
    for name, module in named:
        assert hasattr(__import__(module, fromlist=[name]), name), (module, name)


def test_the_agents_extra_installs_what_create_agent_needs() -> None:
    """``create_agent`` is in ``langchain``, which no extra installed."""
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib before Python 3.11
    extra = re.search(r"^agents = \[(.*)\]$", pyproject, re.M)
    assert extra and '"langchain>=' in extra.group(1), extra
    agents = TEXT[TEXT.index("### Agents and LangGraph") :].split("```python", 1)[0]
    assert "'.[agents]'" in agents
    assert "python3 -m pip install '.[agents]'" in TEXT  # in the Install block too


def test_the_serve_extra_installs_starlette_and_uvicorn() -> None:
    """The status page, ``contextharbor serve`` and examples/web_app.py import both."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r"^serve = \[(.*)\]$", pyproject, re.M)
    assert extra and '"starlette>=' in extra.group(1) and '"uvicorn>=' in extra.group(1), extra
    make = re.search(r"pip install -q -e '\.\[([\w,]+)\]'", (ROOT / "Makefile").read_text())
    assert make and "serve" in make.group(1).split(","), "make test must install the extra"

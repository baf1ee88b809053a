"""What ``contextharbor`` prints holds up when read (issue 18): a reader that stops early
(``| head -3``) ends the command quietly, every line fits 80 columns with cells wrapped
inside their column (a row never runs into the next), and the route's header says what
its table shows.

Servers are Ollama stand-ins on loopback over real HTTP; the broken-pipe cases run the
module entry point in a subprocess whose stdout is a pipe nobody reads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from langchain_contextharbor.cli import EXIT_DEGRADED, EXIT_OK, WIDTH, main
from langchain_contextharbor.routing import (
    BackendSnapshot,
    LoadedModel,
    RoutePolicy,
    RouteRequest,
    plan_route,
)
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

ROOT = Path(__file__).resolve().parents[2]
SMALL = "llama3.2:1b"
GIB = 1024**3


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def pair(ollama_standin_factory: StandInFactory) -> tuple[OllamaStandIn, OllamaStandIn]:
    models: list[StandInModel | str] = [SMALL, StandInModel("qwen3:8b")]
    gpu = ollama_standin_factory(name="gpu", models=models, loaded=[SMALL], gpu_fraction=1.0)
    cpu = ollama_standin_factory(name="cpu", models=models, loaded=[SMALL], gpu_fraction=0.0)
    return gpu, cpu


def _env(gpu: str, cpu: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OLLAMA_GPU_URL": gpu, "OLLAMA_CPU_URL": cpu}


# ---------------------------------------------------------------------------- broken pipe
@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--json", "check"], EXIT_OK),
        (["check"], EXIT_OK),
        (["models"], EXIT_OK),
        (["route", SMALL, "--table"], EXIT_OK),
        (["--help"], EXIT_OK),
        (["--json", "check", "--gpu-url", "DEAD"], EXIT_DEGRADED),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_a_closed_pipe_ends_the_command_quietly(
    pair: tuple[OllamaStandIn, OllamaStandIn], argv: list[str], code: int
) -> None:
    """``contextharbor --json check | head -3`` printed a ``BrokenPipeError`` traceback and
    exited 1. Here the reader has gone before the first byte: every write fails."""
    gpu, cpu = pair
    argv = [dead_url() if a == "DEAD" else a for a in argv]
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "langchain_contextharbor", *argv],
            env=_env(gpu.url, cpu.url),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert proc.stderr == "", proc.stderr[-2000:]
    assert proc.returncode == code  # what was found, not 1 for the reader's early exit


def test_head_gets_its_lines_and_nothing_else(pair: tuple[OllamaStandIn, OllamaStandIn]) -> None:
    gpu, cpu = pair
    script = f"set -o pipefail; {sys.executable} -m langchain_contextharbor --json check | head -3"
    proc = subprocess.run(
        ["bash", "-c", script],
        env=_env(gpu.url, cpu.url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stderr == "", proc.stderr[-2000:]
    assert proc.returncode == EXIT_OK
    assert len(proc.stdout.splitlines()) == 3


# ---------------------------------------------------------------------------- 80 columns


def _printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return out


@pytest.mark.parametrize("argv", [[], ["check"], ["models"], ["route"]], ids=" ".join)
def test_help_fits_80_columns(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps option help to the terminal's width
    assert main([*argv, "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if len(line) > WIDTH] == []


@pytest.mark.parametrize(
    "argv",
    [["check"], ["models"], ["route", "qwen3:8b"], ["route", "qwen3:8b", "--table"]],
    ids=" ".join,
)
@pytest.mark.parametrize("gpu_state", ["up", "down"])
def test_every_line_fits_80_columns_and_rows_stay_rows(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    gpu_state: str,
) -> None:
    gpu, cpu = pair
    gpu.add_model(StandInModel("nomic-embed-text", digest="a1" * 32))
    cpu.add_model(StandInModel("nomic-embed-text", digest="b2" * 32))
    gpu_url = gpu.url if gpu_state == "up" else dead_url()
    out = _printed(capsys, *argv, "--gpu-url", gpu_url, "--cpu-url", cpu.url)
    too_wide = [line for line in out.splitlines() if len(line) > WIDTH]
    assert not too_wide, "\n".join(too_wide)
    lines = out.splitlines()
    if "--table" in argv or argv[0] != "route":
        # A table row starts at column 0 and its wrapped cells continue on indented lines:
        # the rows can still be counted (and read) one per backend or model.
        starts = [line.split()[0] for line in lines if line and not line[0].isspace()]
        if argv[0] == "check":
            assert starts[:1] == ["BACKEND"] and {"gpu", "cpu"} <= set(starts)
        elif argv[0] == "models":
            assert starts[:4] == ["MODEL", "llama3.2:1b", "nomic-embed-text:latest", "qwen3:8b"]
        else:
            assert "#" in starts and ("1" in starts)


def test_a_wrapped_cell_keeps_its_column(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL too long for its column wraps inside it; the column stays aligned."""
    long_url = dead_url() + "/behind/a/reverse/proxy/ollama"  # 53 characters
    out = _printed(capsys, "check", "--gpu-url", long_url, "--cpu-url", dead_url())
    header = out.splitlines()[0]
    col = header.index("URL")
    rows = [line for line in out.splitlines() if line.startswith(("gpu ", "cpu "))]
    assert len(rows) == 2 and all(len(r) <= WIDTH for r in out.splitlines())
    for r in rows:
        assert r[col - 2 : col] == "  " and r[col] != " ", (header, r)


# ---------------------------------------------------------------------------- header = table
def test_route_header_says_cpu_first_when_the_gpu_is_down(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    """The GPU down: the header said ``gpu first`` above a table whose only row is the CPU."""
    _, cpu = pair
    out = _printed(capsys, "route", SMALL, "--table", "--gpu-url", dead_url(), "--cpu-url", cpu.url)
    lines = out.splitlines()
    table_at = next(i for i, line in enumerate(lines) if line.startswith("#  BACKEND"))
    header = " ".join(" ".join(lines[:table_at]).split())
    first_row = lines[table_at + 1].split()
    assert first_row[:3] == ["1", "cpu", "cpu"]
    assert "gpu first" not in header, header
    assert "cpu first: no gpu backend can take the call (gpu down:" in header, header
    assert "cpu tier (preferred)" in " ".join(out.split())  # the reasons agree


def _req(weights_gb: float) -> RouteRequest:
    return RouteRequest(
        model="m",
        num_ctx=4096,
        weights_bytes=int(weights_gb * GIB),
        needed_bytes=int(weights_gb * GIB),
        size_detail=f"{weights_gb} GiB weights",
    )


def _snap(kind: str, index: int, **kw: object) -> BackendSnapshot:
    return BackendSnapshot(name=kind, kind=kind, url=f"http://{kind}:1", index=index, **kw)  # type: ignore[arg-type]


def test_the_header_names_what_put_the_other_tier_first() -> None:
    """prefer_warm puts a warm CPU before a cold GPU: the header that says the GPU tier is
    preferred also says why the CPU is tried first."""
    warm = LoadedModel(name="m", size=GIB, size_vram=0)
    policy = RoutePolicy(size_threshold_bytes=8 * GIB, prefer_warm=True)
    plan = plan_route(_req(1), [_snap("gpu", 0), _snap("cpu", 1, loaded=warm)], policy)
    assert plan.backends == ["cpu", "gpu"]
    assert "gpu first" in plan.summary
    assert plan.summary.endswith(
        "but cpu (cpu) is tried first: prefer_warm: the model is loaded on cpu"
    )


def test_a_gpu_only_setup_does_not_say_cpu_first() -> None:
    plan = plan_route(_req(40), [_snap("gpu", 0)], RoutePolicy(size_threshold_bytes=8 * GIB))
    assert plan.backends == ["gpu"]
    assert "gpu first: no cpu backend can take the call (none configured)" in plan.summary

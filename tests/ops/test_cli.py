"""The ``contextharbor`` CLI, run in-process through ``main(argv)`` against stand-ins.

Every server here is an Ollama stand-in on loopback, reached over real HTTP; nothing is
mocked. One test runs ``python -m langchain_contextharbor --check`` as a subprocess to prove
the module entry point works.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from langchain_contextharbor.cli import (
    EXIT_ALL_DOWN,
    EXIT_CONFIG,
    EXIT_DEGRADED,
    EXIT_NO_ROUTE,
    EXIT_OK,
    EXIT_USAGE,
    main,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

SMALL = "llama3.2:1b"
GPU_ONLY = "qwen3:8b"
CPU_ONLY = "qwen2.5:0.5b"


@pytest.fixture
def pair(
    ollama_standin_factory: StandInFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[OllamaStandIn, OllamaStandIn]:
    """GPU stand-in (SMALL fully on GPU, GPU_ONLY partly offloaded) and CPU stand-in."""
    gpu = ollama_standin_factory(
        name="gpu", models=[SMALL, StandInModel(GPU_ONLY)], loaded=[SMALL], gpu_fraction=1.0
    )
    gpu.set_loaded(GPU_ONLY, size=100 * 2**20, size_vram=52 * 2**20)
    cpu = ollama_standin_factory(
        name="cpu", models=[SMALL, StandInModel(CPU_ONLY)], loaded=[SMALL], gpu_fraction=0.0
    )
    monkeypatch.setenv("OLLAMA_GPU_URL", gpu.url)
    monkeypatch.setenv("OLLAMA_CPU_URL", cpu.url)
    return gpu, cpu


def dead_url() -> str:
    """A loopback URL nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[str]:
    """The rows of a printed table, each with the continuation lines of its wrapped cells
    (lines that start with a space) joined on, whitespace collapsed: one string per row."""
    rows: list[list[str]] = []
    for line in out.splitlines():
        if line[:1].isspace() and rows:
            rows[-1].append(line)
        else:
            rows.append([line])
    return [" ".join(" ".join(r).split()) for r in rows]


def table_row(out: str, prefix: str) -> str:
    return next(r for r in table_rows(out) if r.startswith(prefix))


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, err = run(capsys, *argv)
    assert "Traceback" not in err
    return code, json.loads(out)


# ---------------------------------------------------------------------------- check
def test_check_table_reports_status_version_latency_and_placement(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    gpu, cpu = pair
    code, out, err = run(capsys, "check")
    assert code == EXIT_OK, err
    assert out.splitlines()[0].split() == [
        "BACKEND",
        "KIND",
        "STATUS",
        "VERSION",
        "LATENCY",
        "MEMORY",
        "URL",
    ]
    statuses = [line.split()[2] for line in out.splitlines()[1:] if line[:1].isalnum()]
    assert statuses[:2] == ["healthy", "healthy"] and "unhealthy" not in out
    assert "0.14.3" in out and " ms " in out
    assert gpu.url in out and cpu.url in out
    # Ollama's own words for the GPU/CPU split of each loaded model.
    assert f"loaded: {SMALL}  100% GPU" in out
    assert f"loaded: {GPU_ONLY}  48%/52% CPU/GPU" in out
    assert f"loaded: {SMALL}  100% CPU" in out
    assert out.rstrip().endswith("2/2 backends healthy")


def test_check_json_extends_the_original_shape(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    gpu, cpu = pair
    code, data = run_json(capsys, "check", "--json")
    assert code == EXIT_OK
    assert list(data) == ["gpu", "cpu"]
    g, c = data["gpu"], data["cpu"]
    # The original hybrid_router.py --check keys, with their meaning kept ...
    assert (g["status"], g["url"], g["is_gpu"], g["version"]) == (
        "healthy",
        gpu.url,
        True,
        "0.14.3",
    )
    assert (c["status"], c["url"], c["is_gpu"], c["error"]) == ("healthy", cpu.url, False, None)
    # ... and the extension.
    for entry in (g, c):
        assert set(entry) >= {
            "kind",
            "latency_ms",
            "max_memory_gb",
            "free_memory_gb",
            "memory_source",
            "models_available",
            "models_loaded",
        }
        assert entry["latency_ms"] > 0
    placements = {m["name"]: m["placement"] for m in g["models_loaded"]}
    assert placements == {SMALL: "100% GPU", GPU_ONLY: "48%/52% CPU/GPU"}
    partial = next(m for m in g["models_loaded"] if m["name"] == GPU_ONLY)
    assert (partial["gpu_percent"], partial["size_vram_bytes"]) == (52, 52 * 2**20)
    assert [m["placement"] for m in c["models_loaded"]] == ["100% CPU"]
    assert c["models_available"] == 2


def test_check_exit_codes_some_down_all_down(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    gpu, cpu = pair
    cpu.stop()
    code, data = run_json(capsys, "check", "--json")
    assert code == EXIT_DEGRADED
    assert data["cpu"]["status"] == "unhealthy"
    assert "ConnectError" in data["cpu"]["error"] and data["cpu"]["version"] is None
    assert data["gpu"]["status"] == "healthy"

    code, out, _ = run(capsys, "check")
    assert code == EXIT_DEGRADED
    assert "unhealthy" in out and "error: ConnectError" in out
    assert "1/2 backends healthy" in out

    gpu.stop()
    code, out, _ = run(capsys, "check")
    assert code == EXIT_ALL_DOWN
    assert "0/2 backends healthy" in out
    assert len({EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_DEGRADED, EXIT_ALL_DOWN, EXIT_NO_ROUTE}) == 6


def test_empty_url_disables_a_backend(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, cpu = pair
    monkeypatch.setenv("OLLAMA_CPU_URL", dead_url())
    assert run(capsys, "check")[0] == EXIT_DEGRADED
    # The flag wins over the environment; '' disables the backend entirely.
    code, data = run_json(capsys, "check", "--json", "--cpu-url", "")
    assert code == EXIT_OK and list(data) == ["gpu"]
    code, data = run_json(capsys, "--cpu-url", cpu.url, "check", "--json")
    assert code == EXIT_OK and data["cpu"]["url"] == cpu.url


def test_credentials_never_printed(
    ollama_standin_factory: StandInFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[SMALL], loaded=[SMALL])
    secret_gpu = gpu.url.replace("http://", "http://user:secret@")
    secret_cpu = dead_url().replace("http://", "http://admin:secret@")  # down: error path
    monkeypatch.setenv("OLLAMA_GPU_URL", secret_gpu)
    monkeypatch.setenv("OLLAMA_CPU_URL", secret_cpu)
    outputs = []
    for argv in (
        ["check"],
        ["check", "--json"],
        ["--check"],
        ["models"],
        ["models", "--json", "--detail"],
        ["route", SMALL],
        ["route", SMALL, "--json"],
    ):
        code, out, err = run(capsys, *argv)
        assert code in (EXIT_OK, EXIT_DEGRADED), (argv, err)
        outputs.append(out + err)
    # A bad URL with credentials: the error names the variable, never the password.
    monkeypatch.setenv("OLLAMA_CPU_URL", "http://admin:secret@:80")
    code, out, err = run(capsys, "check")
    assert code == EXIT_CONFIG
    outputs.append(out + err)
    for text in outputs:
        assert "secret" not in text
    assert "http://***@127.0.0.1" in outputs[0]
    assert json.loads(outputs[1].strip())["gpu"]["url"].startswith("http://***@")


def test_probe_timeout_bounds_a_hung_server(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cpu = pair
    # Accepts the connection and says nothing for 1.2 s: longer than --timeout 0.5, shorter
    # than the default probe timeout (1.5 s). "unhealthy" therefore proves the flag's timeout
    # ended the wait, however slow the machine (a 1.25 s stopwatch bound could trip on a
    # loaded CI machine); the generous bound is a sanity check that the command returns.
    cpu.inject(Fault.ACCEPT_HANG, delay=1.2)
    started = time.monotonic()
    code, data = run_json(capsys, "check", "--json", "--timeout", "0.5")
    assert time.monotonic() - started < 10
    assert code == EXIT_DEGRADED
    assert data["cpu"]["status"] == "unhealthy"
    assert "timed out" in data["cpu"]["error"] or "no answer" in data["cpu"]["error"]
    assert data["gpu"]["status"] == "healthy"


# ---------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("env", "argv", "needle"),
    [
        ({"OLLAMA_GPU_URL": "not a url"}, [], "OLLAMA_GPU_URL 'not a url' has no scheme"),
        ({"OLLAMA_CPU_URL": "ftp://host:1"}, [], "OLLAMA_CPU_URL"),
        ({"OLLAMA_GPU_URL": "http://127.0.0.1:99999"}, [], "65535"),
        ({}, ["--gpu-url", "127.0.0.1:11434"], "--gpu-url"),
        ({"OLLAMA_GPU_URL": "", "OLLAMA_CPU_URL": ""}, [], "no backend configured"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_1(
    env: dict[str, str],
    argv: list[str],
    needle: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OLLAMA_GPU_URL", dead_url())
    monkeypatch.setenv("OLLAMA_CPU_URL", dead_url())
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for command in (["check"], ["models"], ["route", SMALL]):
        code, out, err = run(capsys, *argv, *command)
        assert code == EXIT_CONFIG
        assert out == ""
        assert err.count("\n") == 1 and err.startswith("contextharbor: error: ")
        assert needle in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--timeout", "0"],
        ["check", "--timeout", "soon"],
        ["route"],
        ["route", SMALL, "--num-ctx", "-1"],
        ["frobnicate"],
        ["--check", "models"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert "usage: contextharbor" in err and "Traceback" not in err


def test_help_documents_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == EXIT_OK
    for text in (
        "check",
        "models",
        "route",
        "--check",
        "--models",
        "--timeout",
        "--json",
        "OLLAMA_GPU_URL",
        "OLLAMA_CPU_URL",
        "exit codes:",
    ):
        assert text in out
    for exit_code in (EXIT_DEGRADED, EXIT_ALL_DOWN, EXIT_NO_ROUTE):
        assert f"\n  {exit_code} " in out
    code, out, _ = run(capsys, "route", "--help")
    assert code == EXIT_OK and "--num-ctx" in out and "MODEL" in out


# ---------------------------------------------------------------------------- models
def test_models_marks_models_on_one_backend(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "models")
    assert code == EXIT_OK
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["MODEL"].split() == ["MODEL", "gpu", "cpu", "DIGEST"]
    small_digest = pair[0].get_model(SMALL).digest  # type: ignore[union-attr]
    assert lines[SMALL].split() == [SMALL, "yes", "yes", small_digest[:12]]
    assert "* only on gpu: no fallback" in lines[GPU_ONLY]
    assert "* only on cpu: no fallback" in lines[CPU_ONLY]
    assert "2 model(s) on one backend only" in out


def test_models_json_is_the_original_shape(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(capsys, "models", "--json")
    assert code == EXIT_OK
    assert data == {"gpu": [SMALL, GPU_ONLY], "cpu": [SMALL, CPU_ONLY]}
    code, legacy = run_json(capsys, "--models")
    assert code == EXIT_OK and legacy == data

    code, detail = run_json(capsys, "models", "--json", "--detail")
    gpu_only_digest = pair[0].get_model(GPU_ONLY).digest  # type: ignore[union-attr]
    assert detail["models"][GPU_ONLY] == {
        "backends": ["gpu"],
        "only_on": "gpu",
        "loaded": {"gpu": "48%/52% CPU/GPU"},
        "digests": {"gpu": gpu_only_digest},
        "same_digest": None,
    }
    assert detail["models"][SMALL]["same_digest"] is True
    assert detail["models"][SMALL]["only_on"] is None
    assert detail["models"][SMALL]["loaded"] == {"gpu": "100% GPU", "cpu": "100% CPU"}
    assert detail["backends"]["cpu"]["models"] == [SMALL, CPU_ONLY]


def test_models_with_a_backend_down(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cpu = pair
    cpu.stop()
    code, data = run_json(capsys, "models", "--json")
    assert code == EXIT_DEGRADED
    assert data == {"gpu": [SMALL, GPU_ONLY], "cpu": []}  # as the original: [] when down
    code, out, _ = run(capsys, "models")
    assert "cpu: down, its models are unknown" in out
    assert "only on" not in out  # nothing can be said with one backend answering
    code, detail = run_json(capsys, "models", "--json", "--detail")
    assert detail["backends"]["cpu"]["models"] is None


# ---------------------------------------------------------------------------- route
def test_route_explains_every_position(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "route", SMALL)
    assert code == EXIT_OK
    assert out.startswith(f"route for '{SMALL}':")
    assert "1. gpu [gpu]" in out and "2. cpu [cpu]" in out
    assert "model loaded (100% GPU)" in out  # planned on fresh /api/ps data

    code, plan = run_json(capsys, "route", GPU_ONLY, "--num-ctx", "8192", "--json")
    assert code == EXIT_OK
    assert plan["model"] == GPU_ONLY and plan["num_ctx"] == 8192
    assert [c["backend"] for c in plan["candidates"]] == ["gpu"]
    assert all(c["reasons"] for c in plan["candidates"])
    assert plan["skipped"][0]["backend"] == "cpu"
    assert "not in this server's /api/tags" in plan["skipped"][0]["reason"]


def test_route_with_no_candidate_exits_5(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "route", "nonexistent:1b")
    assert code == EXIT_NO_ROUTE
    assert out.count("skipped") == 2


def test_route_does_not_hang_on_a_hung_server(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    gpu, _ = pair
    # Silent for 1.2 s: beyond --timeout 0.4, within the default 1.5 s, so the skipped GPU
    # proves the flag's timeout bounded the wait without a stopwatch (one could trip under load).
    gpu.inject(Fault.ACCEPT_HANG, delay=1.2)
    started = time.monotonic()
    code, plan = run_json(capsys, "route", SMALL, "--json", "--timeout", "0.4")
    assert time.monotonic() - started < 10  # a sanity check that the command returns
    assert code == EXIT_OK
    assert [c["backend"] for c in plan["candidates"]] == ["cpu"]
    assert plan["skipped"][0]["backend"] == "gpu"


# ---------------------------------------------------------------------------- entry points
def test_legacy_check_flag_prints_json(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(capsys, "--check")
    assert code == EXIT_OK
    assert {k: v["status"] for k, v in data.items()} == {"gpu": "healthy", "cpu": "healthy"}


def test_module_entry_point_runs_in_a_subprocess(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    env = {**os.environ, "OLLAMA_GPU_URL": gpu.url, "OLLAMA_CPU_URL": cpu.url}
    proc = subprocess.run(
        [sys.executable, "-m", "langchain_contextharbor", "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    data = json.loads(proc.stdout)
    assert data["gpu"]["status"] == data["cpu"]["status"] == "healthy"
    assert data["gpu"]["version"] == "0.14.3"


def test_models_flags_different_builds_of_one_model(
    pair: tuple[OllamaStandIn, OllamaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    gpu, cpu = pair
    gpu.add_model(StandInModel("nomic-embed-text", digest="a1" * 32))
    cpu.add_model(StandInModel("nomic-embed-text", digest="b2" * 32))
    code, out, _ = run(capsys, "models")
    assert code == EXIT_OK
    line = table_row(out, "nomic-embed-text")
    assert line.split()[1:4] == ["yes", "yes", "DIFFERS"]
    assert "! different builds: gpu a1a1a1a1a1a1, cpu b2b2b2b2b2b2" in line
    assert "1 model(s) with different builds" in out and "pull the same build" in out
    assert "DIFFERS" not in next(x for x in out.splitlines() if x.startswith(SMALL))
    code, detail = run_json(capsys, "models", "--json", "--detail")
    entry = detail["models"]["nomic-embed-text:latest"]
    assert entry["same_digest"] is False
    assert entry["digests"] == {"gpu": "a1" * 32, "cpu": "b2" * 32}

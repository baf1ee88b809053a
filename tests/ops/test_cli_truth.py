"""The CLI tells the truth about a setup: no false "2/2 healthy", the same memory words as
``route``, and the memory of each server in ``check --json``.

Every server is an Ollama stand-in on loopback reached over real HTTP; GPU and RAM readings
are injected (``FakeNVML`` with a recorded H200 reading, fixed ``MemAvailable``/``MemTotal``).
"""

from __future__ import annotations

import json

import pytest

from langchain_contextharbor import BackendConfig, check_backends, health_report, preview_route
from langchain_contextharbor.cli import EXIT_CONFIG, EXIT_OK, main
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.fake_nvml import FakeNVML
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

GIB = 1024**3
MODEL = "llama3.2:1b"


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


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_rejects_one_url_for_both_servers_like_the_library(
    ollama_standin: OllamaStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ollama_standin.url
    code, out, err = _run(capsys, "check", "--gpu-url", url, "--cpu-url", url)
    assert code == EXIT_CONFIG and out == ""
    assert "same URL" in err and "healthy" not in err


def test_check_warns_when_the_cpu_server_places_a_model_on_a_gpu(
    ollama_standin_factory: StandInFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL], loaded=[MODEL])
    # GPUs not hidden from the "CPU" server: /api/ps says the model is on the GPU.
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], loaded=[MODEL], gpu_fraction=1.0)
    argv = ("--gpu-url", gpu.url, "--cpu-url", cpu.url)
    code, out, _ = _run(capsys, "check", *argv)
    assert code == EXIT_OK  # it answers; the warning says what is wrong with it
    assert f"WARNING: {MODEL} is loaded 100% GPU on this cpu server" in out
    assert out.count("WARNING") == 1  # the GPU server's 100% GPU is as it should be
    code, out, _ = _run(capsys, "check", "--json", *argv)
    report = json.loads(out)
    assert report["gpu"]["warnings"] == []
    assert "100% GPU on this cpu server" in report["cpu"]["warnings"][0]

    cpu.set_loaded(MODEL, size_vram=0)  # a correctly set-up CPU server: 100% CPU
    _, out, _ = _run(capsys, "check", *argv)
    assert "WARNING" not in out


def test_check_json_reports_the_memory_of_each_server(
    ollama_standin_factory: StandInFactory,
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL])
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], gpu_fraction=0.0)
    nvml = FakeNVML.from_fixture()
    healths = check_backends(
        [
            BackendConfig(name="gpu", base_url=gpu.url),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
        ],
        nvml=nvml,
        host_memory=lambda: 40 * GIB,
        host_memory_total=lambda: 64 * GIB,
    )
    report = health_report(healths)
    assert report["gpu"]["max_memory_gb"] is not None and report["gpu"]["max_memory_gb"] > 100
    assert report["cpu"]["max_memory_gb"] == 64.0  # MemTotal
    assert report["cpu"]["free_memory_gb"] == 40.0  # MemAvailable


def test_check_reads_memtotal_of_this_host_for_a_local_cpu_server(
    ollama_standin_factory: StandInFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], gpu_fraction=0.0)
    _, out, _ = _run(capsys, "check", "--json", "--gpu-url", "", "--cpu-url", cpu.url)
    assert json.loads(out)["cpu"]["max_memory_gb"] > 0


def test_check_and_route_name_the_same_memory_the_same_way(
    ollama_standin_factory: StandInFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], gpu_fraction=0.0)
    cpu.set_loaded(MODEL, size=43 * GIB, size_vram=0)
    backends = [BackendConfig(name="cpu", base_url=cpu.url, kind="cpu")]
    free = lambda: int(22.5 * GIB)  # noqa: E731

    (health,) = check_backends(backends, host_memory=free, host_memory_total=lambda: 96 * GIB)
    from langchain_contextharbor.cli import _print_check

    _print_check([health], __import__("sys").stdout)
    table = capsys.readouterr().out
    assert "22.5 GiB free + 43.0 GiB in loaded models" in table
    assert "memory source: MemAvailable" in table

    plan = preview_route(MODEL, backends, host_memory=free)
    text = plan.explain()
    # The sum the router plans with, and the same two parts, not "65.5 GiB (MemAvailable)".
    assert "65.5 GiB RAM available (MemAvailable 22.5 GiB + 43.0 GiB held by loaded models)" in (
        text
    ), text


def test_route_table_lists_backends_in_the_order_they_are_tried(
    ollama_standin_factory: StandInFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu = ollama_standin_factory(name="gpu", models=[MODEL])
    cpu = ollama_standin_factory(name="cpu", models=[MODEL], gpu_fraction=0.0)
    argv = ("--gpu-url", gpu.url, "--cpu-url", cpu.url)
    code, out, _ = _run(capsys, "route", MODEL, "--table", *argv)
    assert code == EXIT_OK
    summary, header, first, second = table_rows(out)  # cells wrap within 80 columns
    assert summary.startswith(f"route for '{MODEL}': ")
    assert header.split() == ["#", "BACKEND", "KIND", "URL", "WHY"]
    assert first.split()[:4] == ["1", "gpu", "gpu", gpu.url]
    assert second.split()[:4] == ["2", "cpu", "cpu", cpu.url]
    assert "in flight" in first

    cpu.remove_model(MODEL)
    _, out, _ = _run(capsys, "route", MODEL, "--table", *argv)
    skipped = table_rows(out)[-1]
    assert skipped.split()[:3] == ["-", "cpu", cpu.url] and "skipped: model" in skipped

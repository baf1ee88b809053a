"""Tests of the NVML / host-memory edge (``langchain_contextharbor.gpu``) against FakeNVML.

The fake replays a real H200 reading (``testing/data/nvml-h200.json``, shipped in the package):
idle, while another process holds 40 GiB, and after it lets go. No test sleeps; the backoff
uses an injected clock.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from langchain_contextharbor.gpu import (
    GpuMemory,
    GpuProcess,
    MemorySnapshot,
    NvmlReader,
    parse_visible_devices,
    read_host_memory_available,
    read_host_memory_total,
)
from langchain_contextharbor.testing.fake_nvml import (
    FakeNVML,
    FakeNVMLError,
    StaticGpuReader,
    fake_snapshot,
    find_h200_fixture,
    load_h200_fixture,
)

GIB = 1024**3
H200_TOTAL = 150_754_820_096
H200_FREE_IDLE = 150_109_880_320
H200_FREE_HOLDING = 106_607_804_416
H200_FREE_AFTER = 149_557_477_376
H200_UUID = "GPU-8eda640c-7a17-cd7a-237c-a73491abcd4b"
REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fixture_data() -> dict[str, Any]:
    return load_h200_fixture()


@pytest.fixture
def fake(fixture_data: dict[str, Any]) -> FakeNVML:
    return FakeNVML.from_fixture(fixture_data)


def two_gpu_fake(fixture_data: dict[str, Any]) -> FakeNVML:
    """The H200 fixture doubled: GPU 1 has its own UUID and half the free memory."""
    phases: dict[str, list[dict[str, Any]]] = {}
    for phase in ("idle", "while_holding", "after_release"):
        first = fixture_data[phase][0]
        second = copy.deepcopy(first)
        second["index"] = 1
        second["uuid"] = "GPU-11111111-2222-3333-4444-555555555555"
        second["memory_free"] = first["memory_free"] // 2
        second["memory_used"] = first["memory_total"] - second["memory_free"]
        phases[phase] = [first, second]
    return FakeNVML(phases)


# --- the fixture itself -----------------------------------------------------------------------


def test_fixture_is_in_the_repo_and_matches_shared_copy() -> None:
    path = find_h200_fixture()
    # Shipped as package data, so FakeNVML.from_fixture() works in a plain install.
    assert path == REPO / "langchain_contextharbor" / "testing" / "data" / "nvml-h200.json"
    shared = REPO.parent / "shared" / "fixtures" / "nvml-h200.json"
    if shared.is_file():
        assert json.loads(shared.read_text()) == json.loads(path.read_text())


def test_fake_requires_init_like_real_nvml(fake: FakeNVML) -> None:
    with pytest.raises(FakeNVMLError, match="Uninitialized"):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 1
    assert fake.nvmlSystemGetDriverVersion() == "580.159.04"
    with pytest.raises(FakeNVMLError, match="Invalid Argument"):
        fake.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(ValueError, match="unknown phase"):
        fake.set_phase("busy")


# --- reading memory ----------------------------------------------------------------------------


def test_idle_reading_from_fixture(fake: FakeNVML) -> None:
    clock = FakeClock(42.0)
    snapshot = NvmlReader(fake, env={}, clock=clock).read()
    assert snapshot.source == "nvml"
    assert snapshot.known and snapshot.reason is None
    assert snapshot.gpus == (
        GpuMemory(
            index=0,
            name="NVIDIA H200",
            uuid=H200_UUID,
            total=H200_TOTAL,
            used=644_939_776,
            free=H200_FREE_IDLE,
        ),
    )
    assert snapshot.total_free() == H200_FREE_IDLE
    assert snapshot.max_free() == H200_FREE_IDLE
    assert snapshot.total() == H200_TOTAL
    assert snapshot.read_at == 42.0
    assert snapshot.query_ms >= 0


def test_free_drops_by_about_40_gib_while_another_process_holds_memory(fake: FakeNVML) -> None:
    reader = NvmlReader(fake, env={})
    idle = reader.read().total_free()
    fake.set_phase("while_holding")
    holding = reader.read().total_free()
    fake.set_phase("after_release")
    after = reader.read().total_free()

    assert idle == H200_FREE_IDLE
    assert holding == H200_FREE_HOLDING
    assert after == H200_FREE_AFTER
    assert idle is not None and holding is not None
    drop = idle - holding  # 43_502_075_904: the 40 GiB tensor plus the CUDA context
    assert drop == 43_502_075_904
    assert 40 * GIB <= drop < 41 * GIB


def test_init_once_and_names_cached(fake: FakeNVML) -> None:
    reader = NvmlReader(fake, env={})
    for _ in range(5):
        assert reader.read().known
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetName"] == 1
    assert fake.calls["nvmlDeviceGetUUID"] == 1
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 5


def test_bytes_names_are_decoded(fixture_data: dict[str, Any]) -> None:
    fake = FakeNVML.from_fixture(fixture_data, bytes_strings=True)
    snapshot = NvmlReader(fake, env={}).read()
    assert snapshot.gpus is not None
    assert snapshot.gpus[0].name == "NVIDIA H200"
    assert snapshot.gpus[0].uuid == H200_UUID


def test_close_shuts_down_and_next_read_reinits(fake: FakeNVML) -> None:
    reader = NvmlReader(fake, env={})
    reader.read()
    reader.close()
    assert fake.calls["nvmlShutdown"] == 1
    assert not fake.initialized
    assert reader.read().known
    assert fake.calls["nvmlInit"] == 2


def test_concurrent_reads_init_once(fake: FakeNVML) -> None:
    reader = NvmlReader(fake, env={})
    results: list[MemorySnapshot] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            snap = reader.read()
            with lock:
                results.append(snap)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 400
    assert all(s.total_free() == H200_FREE_IDLE for s in results)
    assert fake.calls["nvmlInit"] == 1


# --- CUDA_VISIBLE_DEVICES ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "", " ", "-1,0"])
def test_no_visible_gpus(fake: FakeNVML, value: str) -> None:
    snapshot = NvmlReader(fake, env={"CUDA_VISIBLE_DEVICES": value}).read()
    assert snapshot.gpus == ()
    assert snapshot.known  # known to be none, not unknown
    assert snapshot.total_free() == 0
    assert snapshot.max_free() == 0


def test_visible_devices_from_process_environment(
    fake: FakeNVML, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = NvmlReader(fake)  # env=None: os.environ at each read
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert reader.read().gpus == ()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert reader.read().total_free() == H200_FREE_IDLE


@pytest.mark.parametrize(
    ("value", "indices"),
    [
        (None, [0, 1]),
        ("0", [0]),
        ("1", [1]),
        ("1,0", [1, 0]),
        (H200_UUID, [0]),
        ("GPU-8eda640c", [0]),  # unique prefix
        ("gpu-11111111", [1]),
        ("11111111-2222", [1]),  # without the GPU- prefix
        (f"GPU-11111111, {H200_UUID}", [1, 0]),
        ("0,-1,1", [0]),  # CUDA stops at the first invalid entry
        ("0,7,1", [0]),
        ("GPU-", []),  # ambiguous prefix is invalid
        ("GPU-deadbeef", []),
        ("0,0", [0]),
        ("", []),
        ("-1", []),
    ],
)
def test_parse_visible_devices(value: str | None, indices: list[int]) -> None:
    devices = [(0, H200_UUID), (1, "GPU-11111111-2222-3333-4444-555555555555")]
    result = parse_visible_devices(value, devices)
    if value is None:
        assert result is None
    else:
        assert result == indices


def test_uuid_selection_reads_only_that_gpu(fixture_data: dict[str, Any]) -> None:
    fake = two_gpu_fake(fixture_data)
    all_gpus = NvmlReader(fake, env={}).read()
    assert all_gpus.gpus is not None and len(all_gpus.gpus) == 2
    assert all_gpus.total_free() == H200_FREE_IDLE + H200_FREE_IDLE // 2

    reader = NvmlReader(fake, env={"CUDA_VISIBLE_DEVICES": "GPU-11111111"})
    snapshot = reader.read()
    assert snapshot.gpus is not None
    assert [g.index for g in snapshot.gpus] == [1]
    assert snapshot.total_free() == H200_FREE_IDLE // 2

    by_uuid = NvmlReader(fake, env={"CUDA_VISIBLE_DEVICES": H200_UUID}).read()
    assert by_uuid.gpus is not None
    assert [g.uuid for g in by_uuid.gpus] == [H200_UUID]


# --- failures ----------------------------------------------------------------------------------


def test_init_failure_is_unavailable_and_retried_only_after_backoff(
    fixture_data: dict[str, Any],
) -> None:
    fake = FakeNVML.from_fixture(fixture_data, fail_init=True)
    clock = FakeClock(100.0)
    reader = NvmlReader(fake, env={}, clock=clock, retry_after_s=60.0)

    first = reader.read()
    assert first.gpus is None and not first.known
    assert first.total_free() is None and first.total() is None and first.max_free() is None
    assert first.source.startswith("unavailable: ")
    assert first.reason is not None and "Driver Not Loaded" in first.reason
    assert fake.calls["nvmlInit"] == 1

    clock.now += 59.9
    again = reader.read()
    assert again.reason == first.reason
    assert again.read_at == clock.now
    assert fake.calls["nvmlInit"] == 1  # still backing off: NVML not touched

    clock.now += 0.2  # 60.1 s after the failure
    reader.read()
    assert fake.calls["nvmlInit"] == 2

    fake.fail_init = False  # the driver got loaded
    clock.now += 30
    assert not reader.read().known  # backoff from the second failure still running
    clock.now += 31
    recovered = reader.read()
    assert recovered.total_free() == H200_FREE_IDLE
    assert fake.calls["nvmlInit"] == 3


def test_query_failure_is_unavailable_then_recovers(fake: FakeNVML) -> None:
    clock = FakeClock()
    reader = NvmlReader(fake, env={}, clock=clock, query_retry_after_s=5.0)
    assert reader.read().known

    fake.fail_queries = True
    failed = reader.read()
    assert failed.gpus is None
    assert failed.reason is not None
    assert "NVML query failed" in failed.reason and "Unknown Error" in failed.reason
    assert fake.calls["nvmlShutdown"] == 1  # so the retry starts from a clean init

    fake.fail_queries = False
    calls = fake.call_count
    clock.now += 4
    assert not reader.read().known
    assert fake.call_count == calls  # backing off

    clock.now += 2
    assert reader.read().total_free() == H200_FREE_IDLE
    assert fake.calls["nvmlInit"] == 2


def test_failure_during_discovery_is_unavailable(fixture_data: dict[str, Any]) -> None:
    fake = FakeNVML.from_fixture(fixture_data, fail_queries=True)
    snapshot = NvmlReader(fake, env={}).read()
    assert snapshot.gpus is None
    assert snapshot.reason is not None and "discovery failed" in snapshot.reason


def test_arbitrary_exceptions_never_escape() -> None:
    class Broken:
        def nvmlInit(self) -> None:
            pass

        def nvmlShutdown(self) -> None:
            raise RuntimeError("also broken")

        def nvmlDeviceGetCount(self) -> int:
            raise RuntimeError("boom")

    snapshot = NvmlReader(Broken(), env={}).read()
    assert snapshot.gpus is None
    assert snapshot.reason is not None and "RuntimeError: boom" in snapshot.reason


def test_real_pynvml_without_gpu_is_unavailable_not_an_error() -> None:
    # On this GPU-less machine nvmlInit fails (library/driver missing). On a GPU host the
    # same call must simply give a real reading.
    reader = NvmlReader()
    snapshot = reader.read()
    if snapshot.gpus is None:
        assert snapshot.source.startswith("unavailable: ")
        assert snapshot.reason
        assert reader.process_usage() is None
    else:
        assert all(g.total > 0 for g in snapshot.gpus)
    reader.close()


def test_importing_gpu_module_does_not_import_pynvml() -> None:
    code = (
        "import sys\n"
        "import langchain_contextharbor.gpu as gpu\n"
        "import langchain_contextharbor.sizing\n"
        "reader = gpu.NvmlReader()\n"
        "assert 'pynvml' not in sys.modules, 'pynvml imported eagerly'\n"
        "reader.read()\n"
        "assert 'pynvml' in sys.modules, 'pynvml not imported on first read'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- processes ---------------------------------------------------------------------------------


def test_process_usage(fake: FakeNVML) -> None:
    reader = NvmlReader(fake, env={})
    assert reader.process_usage() == {0: ()}
    fake.set_phase("while_holding")
    assert reader.process_usage() == {0: (GpuProcess(pid=419, used_bytes=43_492_835_328),)}
    fake.fail_queries = True
    assert reader.process_usage() is None


# --- host memory -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:   123456 kB\n", 123456 * 1024),
        ("MemAvailable: 42\n", 42),
        ("MemTotal:       16384 kB\n", None),
        ("MemAvailable:   lots kB\n", None),
        ("MemAvailable:\n", None),
        ("", None),
    ],
)
def test_read_host_memory_available(tmp_path: Path, content: str, expected: int | None) -> None:
    path = tmp_path / "meminfo"
    path.write_text(content)
    assert read_host_memory_available(str(path)) == expected


def test_read_host_memory_available_missing_file(tmp_path: Path) -> None:
    assert read_host_memory_available(str(tmp_path / "nope")) is None


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="no /proc/meminfo")
def test_read_host_memory_available_real() -> None:
    available = read_host_memory_available()
    assert available is not None and available > 0


def test_read_host_memory_total_uses_the_same_parser(tmp_path: Path) -> None:
    """``MemTotal`` (``contextharbor check``'s RAM figure) is read by the one parser of the
    file, with its rules: kB, a bare number is bytes, anything unreadable is no reading."""
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       16384 kB\nMemAvailable:   123 kB\n")
    assert read_host_memory_total(str(path)) == 16384 * 1024
    path.write_text("MemTotal:       lots kB\n")
    assert read_host_memory_total(str(path)) is None
    assert read_host_memory_total(str(tmp_path / "nope")) is None


# --- snapshot helpers for other tests ----------------------------------------------------------


def test_fake_snapshot_and_static_reader() -> None:
    snapshot = fake_snapshot(8 * GIB, 4 * GIB, total=24 * GIB)
    assert snapshot.source == "fake"
    assert snapshot.total_free() == 12 * GIB
    assert snapshot.max_free() == 8 * GIB
    assert snapshot.total() == 48 * GIB
    reader = StaticGpuReader(snapshot)
    assert reader.read() is snapshot and reader.reads == 1
    assert not StaticGpuReader().read().known
    assert fake_snapshot().gpus == ()

"""A stand-in for the ``pynvml`` module, driven by a recorded NVML reading.

Routing by free VRAM has to be tested on machines without a GPU, and with the memory
changing under the router (another process grabbing 40 GiB, then letting go). The fixture
``nvml-h200.json`` holds exactly that, read from a real H200: ``idle``, ``while_holding`` and
``after_release`` phases. :class:`FakeNVML` replays it through the handful of pynvml functions
:class:`langchain_contextharbor.gpu.NvmlReader` calls, with the same failure behaviour as the
real binding (``NVMLError`` before ``nvmlInit``, on a bad index, when the driver is missing),
so the reader's error paths are tested too. Pass it as ``NvmlReader(nvml=FakeNVML(...))``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_contextharbor.gpu import GpuMemory, MemorySnapshot

__all__ = [
    "FIXTURE_NAME",
    "PHASES",
    "FakeNVML",
    "FakeNVMLError",
    "StaticGpuReader",
    "fake_snapshot",
    "find_h200_fixture",
    "load_h200_fixture",
]

FIXTURE_NAME = "nvml-h200.json"
PHASES = ("idle", "while_holding", "after_release")

# Return codes, as in nvml.h, so reasons read like the real ones.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_UNKNOWN = 999

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``: carries the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


@dataclass(frozen=True)
class FakeHandle:
    """An opaque device handle, as ``nvmlDeviceGetHandleByIndex`` returns."""

    index: int


@dataclass(frozen=True)
class FakeMemoryInfo:
    """The fields of ``c_nvmlMemory_t`` that callers read."""

    total: int
    used: int
    free: int


@dataclass(frozen=True)
class FakeProcessInfo:
    """The fields of ``c_nvmlProcessInfo_t`` that callers read (pynvml's spelling)."""

    pid: int
    usedGpuMemory: int | None


def _fixture_candidates() -> list[Path]:
    """Where the fixture lives: shipped in the package (``testing/data``, package data, so a
    plain ``pip install`` has it), then the shared folder beside a source checkout."""
    here = Path(__file__).resolve().parent
    return [
        here / "data" / FIXTURE_NAME,
        here.parents[1].parent / "shared" / "fixtures" / FIXTURE_NAME,
    ]


def find_h200_fixture() -> Path:
    """Path of ``nvml-h200.json``; ``FileNotFoundError`` listing the places tried."""
    candidates = _fixture_candidates()
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{FIXTURE_NAME} not found; tried {tried}")


def load_h200_fixture(path: str | Path | None = None) -> dict[str, Any]:
    """The recorded H200 NVML reading as a dict (from ``path``, or :func:`find_h200_fixture`)."""
    source = Path(path) if path is not None else find_h200_fixture()
    with source.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object")
    return data


class FakeNVML:
    """A pynvml-compatible object replaying recorded device readings.

    Args:
        phases: phase name -> list of device records in the fixture's shape (``index``,
            ``name``, ``uuid``, ``memory_total``, ``memory_used``, ``memory_free``,
            ``compute_processes``). Every phase must list the same number of devices.
        phase: the phase to start in.
        driver_version: what ``nvmlSystemGetDriverVersion`` returns.
        fail_init: make ``nvmlInit`` raise "Driver Not Loaded", like a host without the driver.
        fail_queries: make device queries raise "Unknown Error", like a GPU falling off the bus.
        bytes_strings: return names and UUIDs as ``bytes``, like older pynvml releases.

    ``calls`` counts calls per function name; the switches can be flipped at any time.
    """

    NVMLError = FakeNVMLError

    def __init__(
        self,
        phases: Mapping[str, Sequence[Mapping[str, Any]]],
        *,
        phase: str = "idle",
        driver_version: str = "580.159.04",
        fail_init: bool = False,
        fail_queries: bool = False,
        bytes_strings: bool = False,
    ) -> None:
        if not phases:
            raise ValueError("FakeNVML needs at least one phase")
        counts = {len(devices) for devices in phases.values()}
        if len(counts) != 1:
            raise ValueError("every phase must list the same number of devices")
        self._phases = {name: [dict(d) for d in devices] for name, devices in phases.items()}
        self._phase = ""
        self.set_phase(phase)
        self.driver_version = driver_version
        self.fail_init = fail_init
        self.fail_queries = fail_queries
        self.bytes_strings = bytes_strings
        self.calls: Counter[str] = Counter()
        self._initialized = 0
        self._lock = threading.Lock()

    @classmethod
    def from_fixture(
        cls,
        path_or_dict: str | Path | Mapping[str, Any] | None = None,
        phase: str = "idle",
        **kwargs: Any,
    ) -> FakeNVML:
        """Build from the fixture JSON (a path, an already-loaded dict, or ``None`` to find it)."""
        data = (
            path_or_dict if isinstance(path_or_dict, Mapping) else load_h200_fixture(path_or_dict)
        )
        phases = {name: data[name] for name in PHASES if isinstance(data.get(name), list)}
        kwargs.setdefault("driver_version", str(data.get("driver_version", "580.159.04")))
        return cls(phases, phase=phase, **kwargs)

    # -- test controls ------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        return self._phase

    def set_phase(self, phase: str) -> None:
        """Switch the readings, e.g. to ``"while_holding"`` after "another process" took 40 GiB."""
        if phase not in self._phases:
            raise ValueError(f"unknown phase {phase!r}; have {sorted(self._phases)}")
        self._phase = phase

    @property
    def call_count(self) -> int:
        """Total calls into the fake, all functions together."""
        return sum(self.calls.values())

    @property
    def initialized(self) -> bool:
        return self._initialized > 0

    # -- pynvml surface -----------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.fail_init:
            raise FakeNVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        with self._lock:
            self._initialized += 1

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        with self._lock:
            if self._initialized == 0:
                raise FakeNVMLError(NVML_ERROR_UNINITIALIZED)
            self._initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._count("nvmlSystemGetDriverVersion")
        self._check()
        return self._str(self.driver_version)

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        self._check()
        return len(self._devices())

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._count("nvmlDeviceGetHandleByIndex")
        self._check()
        if not 0 <= index < len(self._devices()):
            raise FakeNVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle) -> FakeMemoryInfo:
        self._count("nvmlDeviceGetMemoryInfo")
        device = self._device(handle)
        return FakeMemoryInfo(
            total=int(device["memory_total"]),
            used=int(device["memory_used"]),
            free=int(device["memory_free"]),
        )

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str | bytes:
        self._count("nvmlDeviceGetName")
        return self._str(str(self._device(handle).get("name", "")))

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str | bytes:
        self._count("nvmlDeviceGetUUID")
        return self._str(str(self._device(handle).get("uuid", "")))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[FakeProcessInfo]:
        self._count("nvmlDeviceGetComputeRunningProcesses")
        device = self._device(handle)
        return [
            FakeProcessInfo(pid=int(p["pid"]), usedGpuMemory=p.get("used_gpu_memory"))
            for p in device.get("compute_processes", [])
        ]

    # -- internals ----------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def _check(self) -> None:
        if self._initialized == 0:
            raise FakeNVMLError(NVML_ERROR_UNINITIALIZED)
        if self.fail_queries:
            raise FakeNVMLError(NVML_ERROR_UNKNOWN)

    def _devices(self) -> list[dict[str, Any]]:
        return self._phases[self._phase]

    def _device(self, handle: FakeHandle) -> dict[str, Any]:
        self._check()
        devices = self._devices()
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(devices):
            raise FakeNVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return devices[handle.index]

    def _str(self, value: str) -> str | bytes:
        return value.encode() if self.bytes_strings else value


def fake_snapshot(
    *free_bytes: int, total: int | None = None, read_at: float = 0.0
) -> MemorySnapshot:
    """A known snapshot with one GPU per ``free_bytes`` value (source ``"fake"``).

    For router tests that need "this much VRAM is free" without going through NVML.
    ``total`` defaults to each GPU's free amount (an otherwise empty card).
    """
    gpus = tuple(
        GpuMemory(
            index=i,
            name="Fake GPU",
            uuid=f"GPU-fake-{i}",
            total=total if total is not None else free,
            used=(total - free) if total is not None else 0,
            free=free,
        )
        for i, free in enumerate(free_bytes)
    )
    return MemorySnapshot(gpus=gpus, source="fake", read_at=read_at, query_ms=0.0)


class StaticGpuReader:
    """A :class:`~langchain_contextharbor.gpu.GpuReader` returning a settable snapshot."""

    def __init__(self, snapshot: MemorySnapshot | None = None) -> None:
        self.snapshot = (
            snapshot
            if snapshot is not None
            else MemorySnapshot.unavailable("no snapshot set", read_at=0.0)
        )
        self.reads = 0

    def read(self) -> MemorySnapshot:
        self.reads += 1
        return self.snapshot

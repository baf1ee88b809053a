"""Free-memory readings for routing: GPUs via NVML, host RAM via /proc/meminfo.

This is the I/O edge of the router's "does it fit" decision, and it never raises: a missing
driver, a GPU-less host, a lost GPU or an odd pynvml build all become a
:class:`MemorySnapshot` with ``gpus=None`` ("unknown") and the reason in ``source``, so the
router can fall back to what /api/ps says instead of failing a chat call.

Costs, measured on an H200 (``testing/data/nvml-h200.json``): ``import pynvml`` ~100 ms,
``nvmlInit`` ~13 ms, one memory query ~0.05 ms. Hence pynvml is imported lazily on the first
read (importing this module stays cheap for users who never route by VRAM), ``nvmlInit`` runs
once, device handles, names and UUIDs are cached, and a failed init is retried only after a
backoff instead of on every request.

NVML reports what the *driver* sees, for every process: a model Ollama already holds counts
as used. The router combines this with /api/ps to tell "busy with our model" from "full".
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "GpuMemory",
    "GpuProcess",
    "GpuReader",
    "MemorySnapshot",
    "NvmlReader",
    "parse_visible_devices",
    "read_host_memory_available",
    "read_host_memory_total",
    "read_meminfo",
]


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory, in bytes. ``index`` is the NVML (physical) index, not the CUDA one."""

    index: int
    name: str
    uuid: str
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU; ``used_bytes`` is ``None`` where the driver withholds it."""

    pid: int
    used_bytes: int | None


@dataclass(frozen=True)
class MemorySnapshot:
    """A reading of the visible GPUs' memory at one moment.

    ``gpus is None`` means *unknown* (no NVML, or it failed: see ``source``); an empty tuple
    means *known to be none* (e.g. ``CUDA_VISIBLE_DEVICES=-1``). The two must not be confused:
    unknown should make the router fall back to other evidence, none means nothing fits.

    ``source`` is ``"nvml"``, ``"fake"`` or ``"unavailable: <reason>"``. ``read_at`` is in the
    reader's clock (``time.monotonic`` by default) so a caller can judge staleness;
    ``query_ms`` is how long the reading took.
    """

    gpus: tuple[GpuMemory, ...] | None
    source: str
    read_at: float
    query_ms: float = 0.0

    @classmethod
    def unavailable(cls, reason: str, *, read_at: float, query_ms: float = 0.0) -> MemorySnapshot:
        """A snapshot saying the GPUs could not be read, and why."""
        return cls(gpus=None, source=f"unavailable: {reason}", read_at=read_at, query_ms=query_ms)

    @property
    def known(self) -> bool:
        """True when ``gpus`` is a real reading (possibly of zero GPUs)."""
        return self.gpus is not None

    @property
    def reason(self) -> str | None:
        """Why the reading is unavailable, or ``None`` when it is known."""
        if self.gpus is not None:
            return None
        prefix = "unavailable: "
        return self.source[len(prefix) :] if self.source.startswith(prefix) else self.source

    def total_free(self) -> int | None:
        """Free bytes summed over the visible GPUs (0 for none); ``None`` when unknown."""
        return None if self.gpus is None else sum(g.free for g in self.gpus)

    def total(self) -> int | None:
        """Total bytes summed over the visible GPUs (0 for none); ``None`` when unknown."""
        return None if self.gpus is None else sum(g.total for g in self.gpus)

    def max_free(self) -> int | None:
        """The most free bytes on any single GPU (0 for none); ``None`` when unknown.

        Ollama splits a model's layers across GPUs, but each GPU also needs its own copy of
        the compute graph, so the largest single GPU is the figure for a cautious check.
        """
        if self.gpus is None:
            return None
        return max((g.free for g in self.gpus), default=0)


class GpuReader(Protocol):
    """Anything that can produce a :class:`MemorySnapshot` without raising."""

    def read(self) -> MemorySnapshot: ...


def parse_visible_devices(
    value: str | None, devices: Sequence[tuple[int, str]]
) -> list[int] | None:
    """Apply ``CUDA_VISIBLE_DEVICES`` to ``(nvml_index, uuid)`` pairs; return visible indices.

    Follows the CUDA runtime's rules as far as they matter for counting memory:

    - unset (``None``): every device, returned as ``None`` meaning "no filter";
    - empty, or an entry of ``-1``: no devices (``-1`` is how Ollama's docs force CPU);
    - a comma list of indices and/or UUIDs or unique UUID prefixes (``GPU-8eda640c``);
    - the list stops at the first invalid entry (out of range, unknown or ambiguous UUID),
      keeping the devices named before it -- CUDA's documented behaviour, which is why ``-1``
      hides everything when it comes first;
    - duplicates are ignored.

    Caveat: CUDA numbers devices fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, while
    NVML numbers them by PCI bus; on a machine with *different* GPU models an index can mean
    a different card to CUDA than to NVML. UUIDs have no such ambiguity.
    """
    if value is None:
        return None
    by_index = {index for index, _ in devices}
    selected: list[int] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            break
        chosen: int | None = None
        if entry.lstrip("+-").isdigit():
            number = int(entry)
            chosen = number if number in by_index else None
        else:
            wanted = entry.lower()
            if not wanted.startswith("gpu-"):
                wanted = f"gpu-{wanted}"
            matches = [index for index, uuid in devices if uuid.lower().startswith(wanted)]
            chosen = matches[0] if len(matches) == 1 else None
        if chosen is None:
            break
        if chosen not in selected:
            selected.append(chosen)
    return selected


def _describe_error(exc: BaseException) -> str:
    """``ClassName: message`` for an exception, robust to a ``__str__`` that itself fails."""
    try:
        message = str(exc)
    except Exception:  # pynvml's __str__ calls back into NVML
        message = ""
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def _text(value: object) -> str:
    """NVML strings come back as ``bytes`` from older bindings and ``str`` from newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _import_pynvml() -> Any:
    """Import pynvml without its deprecation chatter.

    The ``pynvml`` 13 distribution warns (FutureWarning) that users should install
    ``nvidia-ml-py``; the module it provides is the same official binding, and a user of this
    package cannot act on the warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import pynvml

    return pynvml


@dataclass(frozen=True)
class _Device:
    index: int
    handle: Any
    name: str
    uuid: str


class NvmlReader:
    """Reads per-GPU memory through NVML; every failure becomes an "unavailable" snapshot.

    Args:
        nvml: a pynvml-compatible module (tests pass
            :class:`langchain_contextharbor.testing.fake_nvml.FakeNVML`). ``None`` imports
            the real pynvml lazily on the first :meth:`read`.
        env: where to look up ``CUDA_VISIBLE_DEVICES``. Pass the *GPU Ollama server's*
            environment when it differs from this process's; ``None`` reads ``os.environ``
            at each read.
        clock: monotonic seconds; injectable so tests can step past the backoff.
        retry_after_s: how long to wait before retrying after nvmlInit (or the import) failed.
            Missing drivers do not appear on their own, so retrying every request would only
            add ~13 ms of latency each time.
        query_retry_after_s: the wait after a failed memory query. Shorter, because a query
            failure is more often transient (e.g. a driver reload); the next try re-inits.

    Thread-safe: one lock serialises init and reads (a read is ~0.05 ms per GPU).
    """

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_after_s: float = 60.0,
        query_retry_after_s: float = 5.0,
    ) -> None:
        self._nvml = nvml
        self._env = env
        self._clock = clock
        self._retry_after_s = retry_after_s
        self._query_retry_after_s = query_retry_after_s
        self._lock = threading.Lock()
        self._initialized = False
        self._devices: tuple[_Device, ...] | None = None
        self._failure: str | None = None
        self._retry_at = 0.0

    # -- public -------------------------------------------------------------------------------

    def read(self) -> MemorySnapshot:
        """Read the visible GPUs' memory now. Never raises."""
        started = time.perf_counter()
        with self._lock:
            now = self._clock()
            try:
                failure = self._ensure_ready(now)
                if failure is not None:
                    return MemorySnapshot.unavailable(
                        failure, read_at=now, query_ms=_elapsed_ms(started)
                    )
                gpus = self._read_memory()
            except Exception as exc:
                reason = f"NVML query failed: {_describe_error(exc)}"
                self._fail(reason, now, self._query_retry_after_s, shutdown=True)
                return MemorySnapshot.unavailable(
                    reason, read_at=now, query_ms=_elapsed_ms(started)
                )
            return MemorySnapshot(
                gpus=gpus, source="nvml", read_at=now, query_ms=_elapsed_ms(started)
            )

    def process_usage(self) -> dict[int, tuple[GpuProcess, ...]] | None:
        """Compute processes per visible GPU (by NVML index), or ``None`` if unavailable.

        Useful to attribute used memory to an Ollama runner's PID. Never raises; a failure
        here does not put the reader into backoff (it is an optional extra).
        """
        with self._lock:
            try:
                if self._ensure_ready(self._clock()) is not None:
                    return None
                nvml: Any = self._nvml
                result: dict[int, tuple[GpuProcess, ...]] = {}
                for device in self._visible_devices():
                    processes = nvml.nvmlDeviceGetComputeRunningProcesses(device.handle)
                    result[device.index] = tuple(
                        GpuProcess(
                            pid=int(p.pid),
                            used_bytes=(
                                int(p.usedGpuMemory) if p.usedGpuMemory is not None else None
                            ),
                        )
                        for p in processes
                    )
                return result
            except Exception:
                return None

    def close(self) -> None:
        """Shut NVML down (if this reader started it). The next :meth:`read` re-inits."""
        with self._lock:
            self._shutdown()
            self._failure = None
            self._retry_at = 0.0

    # -- internals (called with the lock held) -------------------------------------------------

    def _ensure_ready(self, now: float) -> str | None:
        """Import and init NVML if needed; return a failure reason, or ``None`` when ready."""
        if self._initialized:
            return None
        if self._failure is not None and now < self._retry_at:
            return self._failure
        if self._nvml is None:
            try:
                self._nvml = _import_pynvml()
            except Exception as exc:
                reason = f"pynvml not importable: {_describe_error(exc)}"
                self._fail(reason, now, self._retry_after_s)
                return reason
        try:
            self._nvml.nvmlInit()
        except Exception as exc:
            reason = f"nvmlInit failed: {_describe_error(exc)}"
            self._fail(reason, now, self._retry_after_s)
            return reason
        self._initialized = True
        self._failure = None
        try:
            self._devices = self._discover()
        except Exception as exc:
            reason = f"NVML device discovery failed: {_describe_error(exc)}"
            self._fail(reason, now, self._query_retry_after_s, shutdown=True)
            return reason
        return None

    def _discover(self) -> tuple[_Device, ...]:
        """Handles, names and UUIDs never change while NVML is up, so fetch them once."""
        nvml: Any = self._nvml
        devices = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            devices.append(
                _Device(
                    index=index,
                    handle=handle,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                )
            )
        return tuple(devices)

    def _visible_devices(self) -> list[_Device]:
        devices = self._devices or ()
        env = os.environ if self._env is None else self._env
        visible = parse_visible_devices(
            env.get("CUDA_VISIBLE_DEVICES"), [(d.index, d.uuid) for d in devices]
        )
        if visible is None:
            return list(devices)
        by_index = {d.index: d for d in devices}
        return [by_index[i] for i in visible]

    def _read_memory(self) -> tuple[GpuMemory, ...]:
        nvml: Any = self._nvml
        gpus = []
        for device in self._visible_devices():
            info = nvml.nvmlDeviceGetMemoryInfo(device.handle)
            gpus.append(
                GpuMemory(
                    index=device.index,
                    name=device.name,
                    uuid=device.uuid,
                    total=int(info.total),
                    used=int(info.used),
                    free=int(info.free),
                )
            )
        return tuple(gpus)

    def _fail(self, reason: str, now: float, backoff_s: float, *, shutdown: bool = False) -> None:
        self._failure = reason
        self._retry_at = now + backoff_s
        if shutdown:
            self._shutdown()

    def _shutdown(self) -> None:
        """Best-effort nvmlShutdown; a later init starts from a clean slate."""
        if self._initialized and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._initialized = False
        self._devices = None


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def read_meminfo(key: str, meminfo_path: str = "/proc/meminfo") -> int | None:
    """One field of /proc/meminfo (``MemAvailable``, ``MemTotal``, ...), in bytes; ``None``
    if the file, the field or its number cannot be read.

    The one parser of that file (the router reads ``MemAvailable``, ``contextharbor check``
    ``MemTotal``): the kernel writes ``Key:   <number> kB``; a number without a unit is
    bytes, and an unknown unit or a negative number is no reading rather than a guess.
    """
    try:
        with open(meminfo_path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name.strip() != key:
                    continue
                parts = rest.split()
                if not parts:
                    return None
                amount = int(parts[0])
                unit = parts[1].lower() if len(parts) > 1 else "b"
                multiplier = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}.get(unit)
                if multiplier is None or amount < 0:
                    return None
                return amount * multiplier
    except (OSError, ValueError):
        return None
    return None


def read_host_memory_available(meminfo_path: str = "/proc/meminfo") -> int | None:
    """``MemAvailable`` from /proc/meminfo, in bytes; ``None`` if it cannot be read.

    This is the CPU server's capacity: the kernel's own estimate of memory that can be given
    to a new process without swapping (it counts reclaimable page cache, unlike ``MemFree``).
    Ollama compares a CPU-resident model against free RAM the same way before loading.
    Container memory limits (cgroups) are not applied here.
    """
    return read_meminfo("MemAvailable", meminfo_path)


def read_host_memory_total(meminfo_path: str = "/proc/meminfo") -> int | None:
    """``MemTotal`` from /proc/meminfo in bytes (a local CPU server's RAM); ``None`` if unread."""
    return read_meminfo("MemTotal", meminfo_path)

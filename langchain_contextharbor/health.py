"""Health, model inventory and route previews of the configured Ollama servers.

Why a module of its own: "is each server up, which version, what is loaded and where, which
models does it have, and where would this model go" is asked by the ``contextharbor`` CLI,
by deployment scripts and by monitoring alike. These functions give every caller the same
answer, computed by the same probe code the chat model routes with (``/api/version``,
``/api/tags``, ``/api/ps`` and NVML / ``MemAvailable``), so what ``contextharbor check``
prints is what :class:`HybridChatOllama` sees.

Every function here is bounded in time: each probe request has the probe timeout, and the
caller stops waiting after the probe timeout (plus a small grace) even if a server keeps
a connection open without answering; such a server is reported unhealthy, not waited for.

URLs are always shown with credentials removed, in results and in error texts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_contextharbor._facts import ProbeResult, capacity
from langchain_contextharbor._router import Router
from langchain_contextharbor._settings import RouterSettings
from langchain_contextharbor.backends import (
    CPU_URL_ENV,
    DEFAULT_CPU_URL,
    DEFAULT_GPU_URL,
    GPU_URL_ENV,
    BackendConfig,
    backends_from_env,
    coerce_backends,
    validate_base_url,
)
from langchain_contextharbor.chat_models import HybridChatOllama
from langchain_contextharbor.errors import ConfigurationError
from langchain_contextharbor.gpu import read_host_memory_total
from langchain_contextharbor.routing import LoadedModel, RoutePlan

__all__ = [
    "BackendHealth",
    "check_backends",
    "health_report",
    "list_models",
    "models_on_one_backend",
    "preview_route",
    "resolve_backends",
]

_GIB = 1024**3
# Scheduling slack on top of the probe timeout before a silent server is given up on: the
# probe's own httpx timeout fires at the timeout, and reporting it should not race that.
_GRACE_S = 0.25

BackendsArg = HybridChatOllama | Sequence[BackendConfig | Mapping[str, Any]] | None


@dataclass(frozen=True)
class BackendHealth:
    """What one probe of one backend found.

    ``models`` is ``None`` when the server did not answer (unknown, not "none"). ``loaded``
    comes from ``/api/ps``; each entry's ``placement`` is Ollama's own wording ("100% GPU",
    "100% CPU", "48%/52% CPU/GPU"). ``max_memory_gb`` is the configured capacity, else the
    measured one (NVML total VRAM of a local GPU server, ``MemTotal`` of a local CPU
    server), else ``None``. ``free_memory_gb`` is the free part (free VRAM, ``MemAvailable``,
    or configured capacity minus loaded models) and ``loaded_memory_gb`` what the loaded
    models hold (VRAM on a GPU server, their whole size on a CPU server); the router plans
    with their sum, because Ollama unloads idle models to make room. ``memory_source`` says
    where the numbers came from. ``warnings`` flags a setup that looks healthy but is not
    what it should be (a model on the "cpu" server placed on a GPU, and the reverse).
    """

    name: str
    url: str
    kind: str
    healthy: bool
    latency_ms: float
    version: str | None = None
    error: str | None = None
    max_memory_gb: float | None = None
    free_memory_gb: float | None = None
    memory_source: str = "unknown"
    models: tuple[str, ...] | None = None
    loaded: tuple[LoadedModel, ...] = ()
    loaded_memory_gb: float | None = None
    warnings: tuple[str, ...] = ()
    digests: tuple[tuple[str, str], ...] = ()
    """``(model, digest)`` pairs from ``/api/tags``: which build of each model this has."""

    def digest_of(self, model: str) -> str | None:
        """The digest of ``model`` (canonical name) on this backend, if it has it."""
        return dict(self.digests).get(model)

    @property
    def status(self) -> str:
        """``"healthy"`` or ``"unhealthy"``: the original script's words."""
        return "healthy" if self.healthy else "unhealthy"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    def as_dict(self) -> dict[str, Any]:
        """The original ``--check`` entry (status, url, is_gpu, version, error), extended.

        The original keys keep their meaning; ``version`` and ``error`` are always present
        (``null`` when not applicable) so consumers need no ``KeyError`` handling.
        """
        return {
            "status": self.status,
            "url": self.url,
            "is_gpu": self.is_gpu,
            "version": self.version,
            "error": self.error,
            "kind": self.kind,
            "latency_ms": round(self.latency_ms, 1),
            "max_memory_gb": _round_gb(self.max_memory_gb),
            "free_memory_gb": _round_gb(self.free_memory_gb),
            "loaded_memory_gb": _round_gb(self.loaded_memory_gb),
            "memory_source": self.memory_source,
            "models_available": None if self.models is None else len(self.models),
            "models_loaded": [_loaded_dict(m) for m in self.loaded],
            "warnings": list(self.warnings),
        }


def _round_gb(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _loaded_dict(m: LoadedModel) -> dict[str, Any]:
    return {
        "name": m.name,
        "placement": m.placement,
        "gpu_percent": m.gpu_percent,
        "size_bytes": m.size,
        "size_vram_bytes": m.size_vram,
        "context_length": m.context_length,
        "expires_at": m.expires_at,
    }


# ---------------------------------------------------------------------------- configuration
def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ConfigurationError(f"probe timeout must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def _check_url(url: str, source: str) -> None:
    """Reject a bad URL with a one-line message that names where it came from.

    ``backends_from_env`` reports the same problems, but wrapped in pydantic's multi-line
    validation text; a command-line user needs one line that says which variable or flag
    to fix.
    """
    validate_base_url(url, what=source)


def resolve_backends(
    backends: BackendsArg = None,
    *,
    env: Mapping[str, str] | None = None,
    gpu_url: str | None = None,
    cpu_url: str | None = None,
    timeout: float | None = None,
) -> list[BackendConfig]:
    """The backends to look at, validated, with ``timeout`` as their probe timeout.

    ``backends`` may be a :class:`HybridChatOllama` (its backends), a list of
    :class:`BackendConfig` or dicts, or ``None``: then ``gpu_url`` / ``cpu_url`` if given,
    else ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL`` from ``env`` (default ``os.environ``),
    exactly as the chat model reads them (unset = default port, empty = disabled).
    Raises :class:`ConfigurationError` with a one-line message.
    """
    probe = _check_timeout(timeout)
    if isinstance(backends, HybridChatOllama):
        configs = backends.backend_configs
    elif backends is not None:
        configs = coerce_backends(backends)
    else:
        source_env = os.environ if env is None else env
        for explicit, flag, var, default in (
            (gpu_url, "--gpu-url", GPU_URL_ENV, DEFAULT_GPU_URL),
            (cpu_url, "--cpu-url", CPU_URL_ENV, DEFAULT_CPU_URL),
        ):
            url, source = (
                (explicit, flag) if explicit is not None else (source_env.get(var, default), var)
            )
            if url.strip():
                _check_url(url, source)
        # coerce_backends rejects the same URL twice, as HybridChatOllama does: a "GPU" and a
        # "CPU" server that are one server would otherwise be reported as two healthy ones.
        configs = coerce_backends(backends_from_env(source_env, gpu_url=gpu_url, cpu_url=cpu_url))
        if not configs:
            raise ConfigurationError(
                f"no backend configured: the GPU and the CPU URL are both empty "
                f"(set {GPU_URL_ENV} or {CPU_URL_ENV})"
            )
    if probe is not None:
        configs = [
            c.model_copy(
                update={
                    "timeouts": c.timeouts.model_copy(
                        update={"probe": probe, "connect": min(c.timeouts.connect, probe)}
                    )
                }
            )
            for c in configs
        ]
    return configs


# ---------------------------------------------------------------------------- probing
def _run_within(fn: Callable[[], object], seconds: float) -> bool:
    """Run ``fn`` on a daemon thread; whether it finished within ``seconds``.

    The probes already have their own timeouts; this is the outer bound that keeps a
    caller from waiting on a server that trickles bytes, or on anything else unforeseen.
    """
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception:  # probes record their own failures; nothing to add here
            pass
        finally:
            done.set()

    threading.Thread(target=run, name="contextharbor-health", daemon=True).start()
    return done.wait(seconds)


def _placement_warnings(cfg: BackendConfig, loaded: Sequence[LoadedModel]) -> tuple[str, ...]:
    """A "cpu" server whose model sits on a GPU (GPUs not hidden), or a "gpu" server at 100% CPU."""
    out = []
    for m in loaded:
        if cfg.kind == "cpu" and m.size_vram > 0:
            out.append(
                f"{m.name} is loaded {m.placement} on this cpu server: its GPUs are not "
                "hidden (see docs/operations.md, Environment variables)"
            )
        elif cfg.kind == "gpu" and m.size > 0 and m.size_vram <= 0:
            out.append(
                f"{m.name} is loaded 100% CPU on this gpu server: check that Ollama finds "
                'the GPU (journalctl: msg="inference compute")'
            )
    return tuple(out)


def _health(
    cfg: BackendConfig,
    p: ProbeResult | None,
    waited_ms: float,
    host_total: Callable[[], int | None],
) -> BackendHealth:
    if p is None:
        return BackendHealth(
            cfg.name,
            cfg.safe_url,
            cfg.kind,
            False,
            waited_ms,
            error=f"no answer within {cfg.timeouts.probe:g} s (probe timeout)",
            max_memory_gb=cfg.max_memory_gb,
            memory_source="max_memory_gb (configured)" if cfg.max_memory_gb else "unknown",
        )
    free, source = capacity(cfg, p if p.ok else None)
    if cfg.max_memory_gb is not None:
        max_gb: float | None = cfg.max_memory_gb
        source = "max_memory_gb (configured)"
    elif cfg.kind == "gpu" and p.gpu_total is not None:
        max_gb = p.gpu_total / _GIB
    elif cfg.kind == "cpu" and cfg.is_local and (total := host_total()) is not None:
        max_gb = total / _GIB
    else:
        max_gb = None
    if not p.ok:
        return BackendHealth(
            cfg.name,
            cfg.safe_url,
            cfg.kind,
            False,
            p.latency_ms,
            error=cfg.scrub(p.reason or "probe failed"),
            max_memory_gb=max_gb,
            memory_source=source,
        )
    loaded = tuple(sorted((p.loaded or {}).values(), key=lambda m: m.name))
    held = sum((m.size_vram if cfg.kind == "gpu" else m.size) for m in loaded)
    return BackendHealth(
        cfg.name,
        cfg.safe_url,
        cfg.kind,
        True,
        p.latency_ms,
        version=p.version or "unknown",
        max_memory_gb=max_gb,
        free_memory_gb=None if free is None else free / _GIB,
        memory_source=source,
        models=tuple(sorted(p.models or {})),
        digests=tuple(sorted((p.digests or {}).items())),
        loaded=loaded,
        loaded_memory_gb=held / _GIB,
        warnings=_placement_warnings(cfg, loaded),
    )


def check_backends(
    backends: BackendsArg = None,
    *,
    env: Mapping[str, str] | None = None,
    gpu_url: str | None = None,
    cpu_url: str | None = None,
    timeout: float | None = None,
    nvml: Any = None,
    host_memory: Callable[[], int | None] | None = None,
    host_memory_total: Callable[[], int | None] | None = None,
) -> list[BackendHealth]:
    """Probe every backend once, in parallel, and report each (configuration order).

    ``backends``/``env``/``gpu_url``/``cpu_url``/``timeout``: see :func:`resolve_backends`.
    ``nvml`` (a pynvml-compatible module), ``host_memory`` (``MemAvailable``) and
    ``host_memory_total`` (``MemTotal``) replace the real GPU and RAM readings (tests).
    Returns within about the probe timeout whatever the servers do.
    """
    configs = resolve_backends(backends, env=env, gpu_url=gpu_url, cpu_url=cpu_url, timeout=timeout)
    router = Router(
        configs, RouterSettings(background_probes=False), nvml=nvml, host_memory=host_memory
    )
    try:
        started = time.perf_counter()
        _run_within(router.refresh, max(c.timeouts.probe for c in configs) + _GRACE_S)
        waited_ms = (time.perf_counter() - started) * 1000
        total = host_memory_total or read_host_memory_total
        return [_health(rt.config, rt.probe, waited_ms, total) for rt in router.backends]
    finally:
        router.close()


def health_report(healths: Sequence[BackendHealth]) -> dict[str, dict[str, Any]]:
    """The ``--check`` JSON: ``{backend name: BackendHealth.as_dict()}``."""
    return {h.name: h.as_dict() for h in healths}


def list_models(
    backends: BackendsArg = None,
    *,
    env: Mapping[str, str] | None = None,
    gpu_url: str | None = None,
    cpu_url: str | None = None,
    timeout: float | None = None,
    healths: Sequence[BackendHealth] | None = None,
) -> dict[str, list[str]]:
    """The original ``--models`` JSON: ``{backend name: [model, ...]}``.

    Models are Ollama's canonical names (``llama3.2`` is listed as ``llama3.2:latest``),
    sorted. A backend that does not answer lists ``[]``, as the original did; use
    :func:`check_backends` (``models`` is ``None`` there) to tell "down" from "empty".
    Pass ``healths`` to reuse a :func:`check_backends` result instead of probing again.
    """
    if healths is None:
        healths = check_backends(
            backends, env=env, gpu_url=gpu_url, cpu_url=cpu_url, timeout=timeout
        )
    return {h.name: list(h.models or ()) for h in healths}


def models_on_one_backend(healths: Sequence[BackendHealth]) -> dict[str, str]:
    """``{model: backend}`` for models that only one answering backend has.

    For these models there is no fallback: if that backend fails, the call fails. Empty
    when fewer than two backends answered (then the question has no useful answer).
    """
    up = [h for h in healths if h.models is not None]
    if len(up) < 2:
        return {}
    where: dict[str, list[str]] = {}
    for h in up:
        for m in h.models or ():
            where.setdefault(m, []).append(h.name)
    return {m: names[0] for m, names in sorted(where.items()) if len(names) == 1}


def preview_route(
    model: str,
    backends: BackendsArg = None,
    *,
    num_ctx: int | None = None,
    env: Mapping[str, str] | None = None,
    gpu_url: str | None = None,
    cpu_url: str | None = None,
    timeout: float | None = None,
    nvml: Any = None,
    host_memory: Callable[[], int | None] | None = None,
) -> RoutePlan:
    """The route a call for ``model`` would take now, planned on freshly probed data.

    With a :class:`HybridChatOllama` as ``backends`` that instance is refreshed and asked
    (its size table, policy and circuit breakers count); with ``timeout`` as well, a
    temporary copy with that probe timeout is asked instead (same size table and policy,
    fresh breakers). Otherwise a temporary one is built from the configuration. Temporary
    instances are closed afterwards. A backend whose probe did not answer in
    time is planned as "unknown" and named in the plan's ``notes``.
    """
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError("model must be a non-empty model tag, e.g. 'llama3.1:8b'")
    if num_ctx is not None and (
        isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx <= 0
    ):
        raise ConfigurationError(f"num_ctx must be a positive integer, got {num_ctx!r}")
    owned = not isinstance(backends, HybridChatOllama)
    if isinstance(backends, HybridChatOllama) and timeout is None:
        llm = backends
    else:
        configs = resolve_backends(
            backends, env=env, gpu_url=gpu_url, cpu_url=cpu_url, timeout=timeout
        )
        extra: dict[str, Any] = {}
        if isinstance(backends, HybridChatOllama):
            extra = {
                "model_sizes": dict(backends.model_sizes),
                "size_threshold_gb": backends.size_threshold_gb,
                "prefer_warm": backends.prefer_warm,
                "spillover": backends.spillover,
            }
            owned = True
        llm = HybridChatOllama(
            model=model,
            backends=configs,
            background_probes=False,
            nvml=nvml,
            host_memory=host_memory,
            **extra,
        )
    try:
        probe = max(c.timeouts.probe for c in llm.backend_configs)
        # Probe, then /api/show for the model's architecture: two probe timeouts at most.
        _run_within(lambda: llm.refresh(model), 2 * probe + _GRACE_S)
        request: dict[str, Any] = {} if num_ctx is None else {"num_ctx": num_ctx}
        plan = llm.select_backend(model, **request)
        silent = [rt.config.name for rt in llm.router.backends if rt.probe is None]
        if silent:
            note = (
                f"no probe answer within {probe:g} s from {', '.join(silent)}: "
                "planned on what was known"
            )
            plan = dataclasses.replace(plan, notes=(*plan.notes, note))
        return plan
    finally:
        if owned:
            llm.close()

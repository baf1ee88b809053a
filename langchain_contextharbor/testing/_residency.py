"""What one stand-in holds in memory: the loaded models, their expiry and their loading.

Why one object: loading a model, pinning it while requests use it, letting it expire after
``keep_alive`` once idle, and making a second request wait for a load that a first one
started are one piece of state under one lock. The server (``set_loaded``, ``unload``,
``loaded``) and the endpoints (``_use_model``) ask this object; neither reaches into the
other's fields.

Times are wall-clock nanoseconds: ``/api/ps`` shows ``expires_at`` as a date, as Ollama does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from langchain_contextharbor.testing._requests import _FOREVER_NS, _NS
from langchain_contextharbor.testing._values import StandInConfig
from langchain_contextharbor.testing.models import LoadedModel, StandInModel

__all__ = ["Pin", "Residency"]


@dataclass(frozen=True)
class Pin:
    """One request's hold on a resident model, from :meth:`Residency.pin` to
    :meth:`Residency.unpin`.

    ``loads``: this request (re)loaded the model and pays the load time, then calls
    :meth:`loaded`; every other request on the model waits with :meth:`wait_loaded`.
    """

    model: LoadedModel
    loads: bool
    _ready: threading.Event | None = field(default=None, repr=False)

    def loaded(self) -> None:
        """The load this request performed is over (requests waiting on it proceed)."""
        if self._ready is not None:
            self._ready.set()

    def wait_loaded(self, timeout: float) -> bool:
        """Whether the model is loaded, waiting up to ``timeout`` seconds for it."""
        return self._ready is None or self._ready.wait(timeout)


class Residency:
    """The models resident in one stand-in, as ``/api/ps`` lists them.

    ``config`` is the stand-in's own (read at each use, as the server reads it): its
    ``keep_alive`` is the default residency, ``num_ctx`` and ``gpu_fraction`` size a model
    loaded without explicit figures. Keys are normalized model names (``StandInModel.name``).
    """

    def __init__(self, config: StandInConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}
        self._ready: dict[str, threading.Event] = {}

    # ------------------------------------------------------------------ reading
    def models(self) -> list[LoadedModel]:
        """The resident models now (expired ones dropped first)."""
        with self._lock:
            self._purge_expired()
            return list(self._loaded.values())

    def keep_alive_ns(self, seconds: float | None = None) -> int:
        """``seconds`` (default: the stand-in's ``keep_alive``) in ns; negative = forever."""
        value = self._config.keep_alive if seconds is None else seconds
        ns = int(value * _NS)
        return _FOREVER_NS if ns < 0 else ns

    # ------------------------------------------------------------------ changing
    def load(
        self,
        spec: StandInModel,
        *,
        size: int | None = None,
        size_vram: int | None = None,
        context_length: int | None = None,
        expires_in: float | None = None,
        num_gpu: int = -1,
    ) -> LoadedModel:
        """Make ``spec`` resident (replacing its entry); unset figures are derived as
        :meth:`~langchain_contextharbor.testing.OllamaStandIn.set_loaded` documents."""
        with self._lock:
            return self._load(spec, size, size_vram, context_length, expires_in, num_gpu)

    def unload(self, key: str | None = None) -> None:
        """Evict the model ``key`` (every model when ``None``)."""
        with self._lock:
            if key is None:
                self._loaded.clear()
            else:
                self._loaded.pop(key, None)

    def pin(self, spec: StandInModel, *, num_ctx: int, num_gpu: int) -> Pin:
        """Hold ``spec`` resident for one request, (re)loading it when it is not resident
        with these runner options (Ollama's ``needsReload``: another ``num_ctx``, or GPU
        use switched on or off). A pinned model does not expire."""
        with self._lock:
            self._purge_expired()
            lm = self._loaded.get(spec.name)
            reload = (
                lm is None or lm.context_length != num_ctx or (lm.num_gpu == 0) != (num_gpu == 0)
            )
            ready: threading.Event | None
            if reload:
                lm = self._load(spec, None, None, num_ctx, None, num_gpu)
                ready = self._ready[spec.name] = threading.Event()
            else:
                ready = self._ready.get(spec.name)
            assert lm is not None
            lm.in_flight += 1
            return Pin(lm, reload, ready)

    def unpin(self, pin: Pin, keep_alive_ns: int) -> None:
        """The request holding ``pin`` ended. The last one out starts the model's
        ``keep_alive`` (0: evict it now, as Ollama does)."""
        lm = pin.model
        with self._lock:
            lm.in_flight -= 1
            if lm.in_flight <= 0:
                lm.in_flight = 0
                if keep_alive_ns == 0:
                    if self._loaded.get(lm.model.name) is lm:
                        del self._loaded[lm.model.name]
                else:
                    lm.keep_alive_ns = keep_alive_ns
                    lm.expires_at_ns = time.time_ns() + keep_alive_ns

    # ------------------------------------------------------------------ under the lock
    def _load(
        self,
        spec: StandInModel,
        size: int | None,
        size_vram: int | None,
        context_length: int | None,
        expires_in: float | None,
        num_gpu: int,
    ) -> LoadedModel:
        cfg = self._config
        ctx = context_length or cfg.num_ctx
        total = size if size is not None else spec.loaded_size(ctx)
        if size_vram is None:
            size_vram = 0 if num_gpu == 0 else int(total * cfg.gpu_fraction)
        ka = self.keep_alive_ns(expires_in)
        lm = LoadedModel(
            model=spec,
            size=total,
            size_vram=size_vram,
            context_length=ctx,
            expires_at_ns=time.time_ns() + ka,
            num_gpu=num_gpu,
            keep_alive_ns=ka,
        )
        self._loaded[spec.name] = lm
        return lm

    def _purge_expired(self) -> None:
        now = time.time_ns()
        for key, lm in list(self._loaded.items()):
            if lm.in_flight == 0 and lm.expires_at_ns <= now:
                del self._loaded[key]
